"""DS-Net-style dynamic width: a gate picks one width per sample of a slimmable network.

Li et al., "Dynamic Slimmable Network" (CVPR 2021). The gate reads the stem's features,
or those after the first `gate_stages` stages, run at `gate_width` (by default the
narrowest: cheap), average-pooled to a `gate_grid` x `gate_grid` grid (1: global pooling),
and scores each configured width with a linear layer. What the gate runs is counted in
every sample's FLOPs (the chosen width then runs from the input).

- Training: a straight-through Gumbel-softmax picks a hard one-hot width per sample;
  every width runs on the whole batch (static shapes) and each sample's logits are the
  one-hot mix `sum_w d[b, w] * logits_w[b]`, so the gate gets a gradient. The per-width
  logits come first in `exit_logits` (narrowest first, then the mix), so cross-entropy on
  every exit also trains the slimmable supernet. A target-cost aux loss
  `cost_weight * (mean FLOPs of the chosen widths / full FLOPs - target)^2` steers the
  gate toward a budget. `flops` reports what ran: the gate plus every width.
- Sandwich gate sparsification (SGS, DS-Net's gate training; `sgs_weight > 0`): the two
  ends of the width range label each training sample online. A sample the narrowest
  width classifies right is easy: the gate's target is the narrowest width. A sample the
  widest width gets wrong is hard: its target is the widest. Other samples get no target.
  `label_losses(out, target)` returns `sgs_weight * CE(gate scores, target)` summed over
  the labelled samples and divided by the batch size (the training loop adds it; the
  model's forward never sees labels).
- Inference: the gate's argmax picks a width per sample; the batch is grouped by width
  and each group runs its compact slice (`SlimmableResNet.forward_logits`). `flops` is
  per sample: the gate plus the chosen width's network.
- Budget and compute cap: at inference `forward(x, policy=WidthPolicy(...))` adds the
  policy's `bias` to the gate's scores before the argmax (`calibrate_width_policy` fits
  one to a mean-FLOPs budget), then clamps each sample's choice to the widest width whose
  per-sample cost, gate included, is `<= max_flops` (and `<= max_width`), so a gate
  pushed to the widest width by a crafted input costs at most the cap;
  `decisions["width_capped"]` marks the samples the cap narrowed.
  `worst_case_flops(input_shape, policy)` is the bound.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...compact import assemble_rows, gather_rows, group_rows
from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...flops import conv_out_size, linear_flops
from ...gates import GumbelSoftmaxGate
from ...inference.width_policy import WidthPolicy
from ...outputs import DynamicOutput
from .._api import ClassifierApi
from .._registry import register_model
from .slimmable_resnet import CIFAR_DEPTHS, SlimmableResNet


class DSNet(ClassifierApi, nn.Module):
    """A slimmable backbone with a per-sample width gate.

    Args:
        backbone: the `SlimmableResNet` (switchable or universal norm).
        tau: Gumbel-softmax temperature while training.
        target_flops_ratio: the mean FLOPs the cost loss aims for, as a fraction of the
            widest network's.
        cost_weight: weight of the target-cost aux loss (0 = off).
        sgs_weight: weight of the sandwich gate sparsification loss (0 = off); see
            `label_losses`.
        gate_width: the width at which the gate runs the stem (None: the narrowest).
        gate_stages: how many backbone stages the gate runs after the stem (0: the stem
            only; DS-Net's own gates sit after stages).
        gate_grid: the gate pools the stem's features to `gate_grid x gate_grid` cells
            (1: one global average per channel).

    Attributes:
        backbone, gate (`nn.Linear(channels of the gate's features * gate_grid**2, num
        widths)`), gumbel (`GumbelSoftmaxGate`), widths, default_input_shape.

    Classifier API (`dynamicnets.models.ClassifierApi`): the widest network's.
    `forward_features(x)` runs the backbone at full width, whatever the gate would
    choose; `forward_head(forward_features(x))` is the widest width's logits (in
    `forward`'s masked output, `exit_logits[-2]`); `reset_classifier` resets the shared
    (slimmable) classifier of every width.

    Shapes:
        `(B, C, H, W)` -> `DynamicOutput` with `logits (B, num_classes)`, `flops (B,)`,
        `decisions["width"] (B,)` (chosen width) and `decisions["width_index"] (B,)`;
        in training also `decisions["width_scores"] (B, num widths)`, the gate's scores.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(
        self,
        backbone: SlimmableResNet,
        *,
        tau: float = 1.0,
        target_flops_ratio: float = 0.5,
        cost_weight: float = 1.0,
        sgs_weight: float = 0.0,
        gate_width: float | None = None,
        gate_grid: int = 1,
        gate_stages: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not 0 < target_flops_ratio <= 1 or cost_weight < 0 or sgs_weight < 0:
            raise ConfigError(
                "DSNet: target_flops_ratio must be in (0, 1], cost_weight and sgs_weight >= 0, got "
                f"{target_flops_ratio!r}, {cost_weight!r}, {sgs_weight!r}"
            )
        if gate_width is not None and gate_width not in backbone.widths:
            raise ConfigError(f"DSNet: gate_width must be one of the widths {list(backbone.widths)}, "
                              f"got {gate_width!r}")
        if isinstance(gate_grid, bool) or not isinstance(gate_grid, int) or gate_grid < 1:
            raise ConfigError(f"DSNet: gate_grid must be an int >= 1, got {gate_grid!r}")
        stages = len(backbone.stages)
        if isinstance(gate_stages, bool) or not isinstance(gate_stages, int) or not 0 <= gate_stages < stages:
            raise ConfigError(f"DSNet: gate_stages must be an int in [0, {stages - 1}], got {gate_stages!r}")
        self.backbone = backbone
        self.widths = backbone.widths
        self.default_input_shape = backbone.default_input_shape
        self.target_flops_ratio = float(target_flops_ratio)
        self.cost_weight = float(cost_weight)
        self.sgs_weight = float(sgs_weight)
        self.gate_width = self.widths[0] if gate_width is None else gate_width
        self.gate_grid = gate_grid
        self.gate_stages = gate_stages
        _, gate_shape = self._gate_features_cost(backbone.default_input_shape)
        gate_in = gate_shape[0] * gate_grid**2
        self.gate = nn.Linear(gate_in, len(self.widths), device=device, dtype=dtype)
        self.gumbel = GumbelSoftmaxGate(tau, hard=True)
        # FLOPs depend on the input shape only: counted once per shape, not at every forward
        self._width_costs: dict[tuple[int, ...], Tensor] = {}

    classifier_paths = ("backbone.head",)

    def forward_features(self, x: Tensor, execution: ExecutionLike = None) -> Tensor:
        """`(B, C, H, W) -> (B, num_features, H', W')`: the backbone at full width.

        `execution` is checked and accepted so that `forward`'s arguments fit here too;
        one width runs the same in either execution.
        """
        resolve_execution(execution, self.training)
        return self.backbone.forward_features(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """The backbone's pool and classifier: `(B, num_features, H', W') -> (B, num_classes)`."""
        return self.backbone.forward_head(features)

    def reset_classifier(self, num_classes: int) -> None:
        """The backbone's `reset_classifier`: one fresh classifier shared by every width."""
        self.backbone.reset_classifier(num_classes)
        self._width_costs.clear()

    def gate_logits(self, x: Tensor) -> Tensor:
        """`(B, C, H, W) -> (B, num widths)` width scores."""
        features = self.backbone.stem(x, self.gate_width)
        if self.gate_stages and self.backbone.stem_kind == "imagenet":
            features = F.max_pool2d(features, 3, 2, 1)
        for blocks in self.backbone.stages[:self.gate_stages]:
            for block in blocks:
                features = block(features, self.gate_width)
        if self.gate_grid == 1:
            pooled = features.mean(dim=(2, 3))
        else:
            pooled = F.adaptive_avg_pool2d(features, self.gate_grid).flatten(1)
        return self.gate(pooled)

    def label_losses(self, out: DynamicOutput, target: Tensor) -> dict[str, Tensor]:
        """Sandwich gate sparsification: `{"sandwich_gate": ()}` (empty when `sgs_weight`
        is 0 or `out` is not a training output).

        `out` is this model's training output (`exit_logits` per width, narrowest first,
        then the mix; `decisions["width_scores"]`), `target` `(B,)` class indices. Easy
        samples (the narrowest width right) target the narrowest width, hard ones (the
        widest wrong, and the narrowest wrong too) the widest; the cross-entropy of the
        gate's scores is summed over them and divided by `B`. The targets are constants: the
        loss trains the gate and the stem it reads, not the widths' predictions.

        Raises:
            ConfigError: `sgs_weight > 0` on an output of compact training (which runs one
                width per sample, so the two ends cannot label it).
        """
        scores = out.decisions.get("width_scores")
        if self.sgs_weight == 0 or scores is None:
            return {}
        if len(out.exit_logits) != len(self.widths) + 1:
            raise ConfigError("DSNet: sgs_weight > 0 needs the masked training execution (every width's logits "
                              "label the samples); compact training runs one width per sample")
        with torch.no_grad():
            easy = out.exit_logits[0].argmax(dim=-1) == target
            hard = ~easy & (out.exit_logits[len(self.widths) - 1].argmax(dim=-1) != target)
            labelled = easy | hard
            wanted = torch.where(easy, 0, len(self.widths) - 1)
        ce = F.cross_entropy(scores.float(), wanted, reduction="none")
        loss = (ce * labelled).sum() / target.shape[0]
        return {"sandwich_gate": self.sgs_weight * loss}

    def _gate_features_cost(self, input_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """FLOPs and `(C, H, W)` shape of the features the gate pools (stem, then
        `gate_stages` stages, at `gate_width`)."""
        backbone = self.backbone
        total, shape = backbone.stem.flops_and_shape(tuple(input_shape), self.gate_width, Execution.COMPACT)
        if self.gate_stages and backbone.stem_kind == "imagenet":
            shape = (shape[0], conv_out_size(shape[1], 3, 2, 1), conv_out_size(shape[2], 3, 2, 1))
        for blocks in backbone.stages[:self.gate_stages]:
            for block in blocks:
                flops, shape = block.flops_and_shape(shape, self.gate_width, Execution.COMPACT)
                total += flops
        return total, shape

    def gate_flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs of the gate (its features at `gate_width` + the linear layer)."""
        features, _ = self._gate_features_cost(tuple(input_shape))
        return features + linear_flops(self.gate)

    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs with nothing narrowed: the gate plus the widest width (what a
        budget fraction of "the full cost" is a fraction of)."""
        shape = tuple(input_shape)
        return float(self.gate_flops(shape) + self.width_costs(shape)[-1])

    def width_costs(self, input_shape: tuple[int, ...]) -> Tensor:
        """`(num widths,)` float64 per-sample FLOPs of each width's network (no gate)."""
        shape = tuple(input_shape)
        if shape not in self._width_costs:
            costs = [self.backbone.flops(shape, w, Execution.COMPACT) for w in self.widths]
            self._width_costs[shape] = torch.tensor(costs, dtype=torch.float64)
        return self._width_costs[shape].clone()

    def run_grouped(self, x: Tensor, choice: Tensor) -> Tensor:
        """Compact execution: samples grouped by `choice` `(B,)` (width indices), each group
        run at its width. Returns logits `(B, num_classes)`."""
        pieces = [(rows, self.backbone.forward_logits(gather_rows(x, rows), self.widths[i]))
                  for i, rows in group_rows(choice, len(self.widths))]
        return assemble_rows(pieces, x.shape[0])

    def run_fused(self, x: Tensor, one_hot: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Static-shape execution: every width on the whole batch, mixed by `one_hot` `(B, W)`.

        Returns the mixed logits `(B, num_classes)` and the per-width logits.
        """
        per_width = [self.backbone.forward_logits(x, w) for w in self.widths]
        mixed = torch.einsum("bw,wbc->bc", one_hot.to(per_width[0].dtype), torch.stack(per_width))
        return mixed, per_width

    def widest_allowed(self, input_shape: tuple[int, ...], policy: WidthPolicy | None) -> int:
        """Index of the widest width `policy` allows on a `(C, H, W)` input (the gate
        included in each width's cost); the widest width without a policy."""
        if policy is None:
            return len(self.widths) - 1
        costs = (self.width_costs(input_shape) + self.gate_flops(input_shape)).tolist()
        return policy.widest_allowed(self.widths, costs, "DSNet")

    def worst_case_flops(self, input_shape: tuple[int, ...], policy: WidthPolicy | None = None) -> float:
        """The most per-sample FLOPs compact inference on a `(C, H, W)` input can cost under
        `policy` (gate + the widest width it allows)."""
        shape = tuple(input_shape)
        return float(self.gate_flops(shape) + self.width_costs(shape)[self.widest_allowed(shape, policy)])

    def forward(self, x: Tensor, execution: ExecutionLike = None, *,
                policy: WidthPolicy | None = None) -> DynamicOutput:
        """Gate, then run the chosen width per sample.

        Args:
            x: `(B, in_chans, H, W)`.
            execution: masked (default in training): every width runs on the whole batch,
                mixed by the one-hot choice (Gumbel-softmax in training, argmax in eval);
                compact (default in eval): the samples are grouped by width and each group
                runs once at its width, as weight slices. Same choice, same logits.
            policy: a `WidthPolicy`: in eval its `bias` shifts the gate's scores, and a
                choice wider than the widest width its cap allows becomes that width
                (both executions). Not used in training.

        Returns:
            `DynamicOutput`: `logits (B, C)`, `flops (B,)` of what ran (masked: every
            width), `decisions["width_index"]`, `decisions["width"]` `(B,)`, with a
            policy `decisions["width_capped"]` `(B,)` bool; in training `exit_logits`
            holds each width's logits, then the mix.
        """
        execution = resolve_execution(execution, self.training)
        shape = tuple(x.shape[1:])
        costs = self.width_costs(shape).to(x.device)
        gate = self.gate_flops(shape)
        logits_g = self.gate_logits(x)
        widths = torch.tensor(self.widths, device=x.device)
        capped = None
        if not self.training:
            wanted = (logits_g if policy is None else policy.biased(logits_g, "DSNet")).argmax(dim=-1)
            limit = self.widest_allowed(shape, policy)
            chosen = wanted.clamp(max=limit)
            capped = None if policy is None else chosen != wanted
        if execution is Execution.MASKED:
            if self.training:
                one_hot = self.gumbel(logits_g)
            else:
                one_hot = F.one_hot(chosen, len(self.widths)).to(logits_g.dtype)
            mixed, per_width = self.run_fused(x, one_hot)
            choice = one_hot.argmax(dim=-1)
            out = DynamicOutput(
                logits=mixed,
                exit_logits=[*per_width, mixed],
                flops=torch.full((x.shape[0],), float(gate), dtype=torch.float64, device=x.device) + costs.sum(),
            )
            if self.training and self.cost_weight > 0:
                full = costs[-1]
                expected = (one_hot.to(torch.float64) @ costs).mean() / full
                loss = self.cost_weight * (expected - self.target_flops_ratio).square()
                out.aux_losses["target_flops"] = loss.to(mixed.dtype)
        else:
            choice = logits_g.argmax(dim=-1) if self.training else chosen
            out = DynamicOutput(logits=self.run_grouped(x, choice), flops=gate + costs[choice])
        out.decisions["width_index"] = choice
        out.decisions["width"] = widths[choice]
        if self.training:
            out.decisions["width_scores"] = logits_g
        if capped is not None:
            out.decisions["width_capped"] = capped
        return out


@register_model
def dsnet_resnet_cifar(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 20,
    base_width: int = 16,
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
    tau: float = 1.0,
    target_flops_ratio: float = 0.5,
    cost_weight: float = 1.0,
    sgs_weight: float = 0.0,
    gate_width: float | None = None,
    gate_grid: int = 1,
    gate_stages: int = 0,
    device=None,
    dtype=None,
) -> DSNet:
    """DS-Net gate on `slimmable_resnet_cifar`; see `DSNet`. Depth 20, 3x32x32, 10 classes:
    274,846 params (20 for the gate); the gate costs 221,216 FLOPs per sample (the stem at
    width 0.25 + a 4x4 linear layer), the widths 5,267,776 to 81,626,368."""
    if depth not in CIFAR_DEPTHS:
        raise ConfigError(
            f"model 'dsnet_resnet_cifar': depth must be one of {sorted(CIFAR_DEPTHS)}, "
            f"got {depth!r}"
        )
    n = CIFAR_DEPTHS[depth]
    backbone = SlimmableResNet(
        "basic", (n, n, n), num_classes, in_chans, stem="cifar", base_width=base_width,
        widths=widths, device=device, dtype=dtype,
    )
    return DSNet(
        backbone, tau=tau, target_flops_ratio=target_flops_ratio, cost_weight=cost_weight,
        sgs_weight=sgs_weight, gate_width=gate_width, gate_grid=gate_grid, gate_stages=gate_stages,
        device=device, dtype=dtype,
    )
