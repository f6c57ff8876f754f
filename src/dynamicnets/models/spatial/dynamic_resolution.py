"""Dynamic resolution per sample: a cheap predictor picks the input resolution of each image.

In the spirit of "Dynamic Resolution Network" (Zhu et al., NeurIPS 2021) and of RS-Net /
Resolution Adaptive Networks: easy images are classified from a small copy (a CIFAR
ResNet-20 at 16x16 costs a quarter of the 32x32 network), hard ones at full size.

- Predictor: `PolicyNetwork`, three small convs on an average-pooled copy of the input
  (16x16 for 32x32 CIFAR), scoring each resolution.
- Backbone: one CIFAR ResNet shared by every resolution, with a private BatchNorm per
  resolution (`resolution_resnet`), global-average-pooled, then one linear classifier.
- Training (masked): a straight-through Gumbel-softmax picks a hard one-hot resolution per
  sample; every resolution runs on the whole batch (static shapes) and each sample's pooled
  features are the one-hot mix of the resolutions' features, so the predictor gets a
  gradient. The per-resolution logits come first in `exit_logits` (smallest first, then the
  mix), so cross-entropy on every exit trains every resolution. A cost loss
  `cost_weight * (mean FLOPs of the chosen resolutions / FLOPs at the largest - target)^2`
  steers the predictor toward a budget (DS-Net's target-cost loss; see also
  `dynamicnets.gates.flops_budget`).
- Inference (compact): each sample's resolution comes from a `ResolutionPolicy` (bias per
  resolution on the predictor's logits + an optional FLOPs cap; without one, the argmax);
  the batch is grouped by resolution, each group resized once and run once at its size.
- `resolution_index=` forces the choice (a `(B,)` tensor of indices), so compact and masked
  execution can be compared for the same decisions.
- A trained plain ResNet starts it: `model.backbone.load_state_dict(resnet20.state_dict())`
  puts each of its BatchNorms into every resolution's (only the predictor is new).

Costs per sample (2 FLOPs per multiply-add, as `FlopCounterMode` counts): the predictor +
the backbone at the chosen resolution + the classifier. The resize (bilinear, antialiased)
and the predictor's pooling are free, like pooling everywhere in the library
(`FlopCounterMode` has no formula for interpolation); `cost_breakdown` states the resize's
arithmetic apart (`dynamicnets.layers.resize.resize_flops`: 3x32x32 -> 16x16 is 18,432).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...compact import assemble_rows, gather_rows, group_rows
from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...flops import linear_flops
from ...gates import GumbelSoftmaxGate
from ...gates.block_gates import PolicyNetwork
from ...inference.resolution_policy import ResolutionPolicy
from ...layers.resize import check_resolutions, resize, resize_flops
from ...outputs import DynamicOutput
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import check_input_shape, require_positive
from ..static.resnet_cifar import CifarResNet
from .resolution_resnet import resolution_resnet, run_trunk


class DynamicResolutionNet(ClassifierApi, nn.Module):
    """A resolution predictor and a backbone run at the resolution it picks, per sample.

    Args:
        backbone: a `resolution_resnet` (one BatchNorm per resolution, or one shared).
        predictor: module `(B, C, H, W) -> (B, R)` logits with `flops(input_shape)`
            (a `PolicyNetwork`).
        resolutions: the square sizes, strictly increasing, each `<= input_size`.
        input_size: the side of the (square) inputs.
        private_norms: the backbone holds one BatchNorm per resolution (else one shared).
        tau: Gumbel-softmax temperature while training.
        target_flops_ratio: mean FLOPs the cost loss aims for, as a fraction of the
            largest resolution's (predictor included).
        cost_weight: weight of the cost loss (0 = off).
        antialias: low-pass filter when resizing down.

    Attributes:
        backbone, predictor, gumbel, resolutions, in_chans, default_input_shape.

    Classifier API: `forward_features(x)` is the pooled features `(B, num_features, 1, 1)`
    each sample's chosen resolution gives (the resolutions' feature maps differ in size, so
    they are pooled per group before they meet); `forward_head` is the linear classifier.

    Shapes:
        `(B, C, H, W)` -> `DynamicOutput` with `logits (B, num_classes)`, `flops (B,)`,
        `decisions["resolution_index"] (B,)`, `decisions["resolution"] (B,)` (pixels) and
        `decisions["resolution_logits"] (B, R)`.
    """

    name = "dynamic_resolution_resnet"
    execution_modes = (Execution.MASKED, Execution.COMPACT)
    head_path = "backbone.head"
    classifier_paths = ("backbone.head.fc",)

    def __init__(
        self,
        backbone: CifarResNet,
        predictor: nn.Module,
        resolutions: tuple[int, ...],
        input_size: int,
        *,
        private_norms: bool = True,
        tau: float = 1.0,
        target_flops_ratio: float = 0.5,
        cost_weight: float = 1.0,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < target_flops_ratio <= 1:
            raise ConfigError(f"dynamic_resolution_resnet: target_flops_ratio must be in (0, 1] (a fraction of the "
                              f"largest resolution's FLOPs), got {target_flops_ratio!r}")
        if not cost_weight >= 0:
            raise ConfigError(f"dynamic_resolution_resnet: cost_weight must be >= 0, got {cost_weight!r}")
        self.resolutions = check_resolutions(resolutions, input_size, "dynamic_resolution_resnet")
        self.backbone = backbone
        self.predictor = predictor
        self.in_chans = backbone.in_chans
        self.default_input_shape = (backbone.in_chans, input_size, input_size)
        self.private_norms = bool(private_norms)
        self.target_flops_ratio = float(target_flops_ratio)
        self.cost_weight = float(cost_weight)
        self.antialias = bool(antialias)
        self.gumbel = GumbelSoftmaxGate(tau, hard=True)
        self._cost_cache: dict[tuple[int, ...], dict] = {}

    # -- costs -------------------------------------------------------------------------------

    def _shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = check_input_shape("dynamic_resolution_resnet", input_shape, self.in_chans, spatial_dims=2)
        if self.resolutions[-1] > min(shape[1:]):
            raise ConfigError(f"dynamic_resolution_resnet: resolutions {list(self.resolutions)} include sizes "
                              f"larger than the input {shape[1]}x{shape[2]}")
        return shape

    def cost_breakdown(self, input_shape: tuple[int, ...]) -> dict:
        """Per-sample FLOPs on a `(C, H, W)` input by part: `predictor`, `backbone` (a list,
        one per resolution, without the classifier), `head` (the classifier), and `resize`
        (a list: the arithmetic of resizing to each resolution, not counted anywhere).

        Computed once per input shape and cached (a fresh copy is returned)."""
        shape = tuple(int(s) for s in input_shape)
        parts = self._cost_cache.get(shape)
        if parts is None:
            shape = self._shape(shape)
            backbone = []
            for r in self.resolutions:
                trunk = self.backbone.cost_breakdown((shape[0], r, r))
                backbone.append(trunk["stem"] + sum(sum(s) for s in trunk["stages"]))
            parts = {"predictor": int(self.predictor.flops(shape)), "backbone": backbone,
                     "head": linear_flops(self.backbone.head.fc),
                     "resize": [resize_flops(shape, r, self.antialias) for r in self.resolutions]}
            self._cost_cache[shape] = parts
        return {k: list(v) if isinstance(v, list) else v for k, v in parts.items()}

    def classifier_changed(self) -> None:
        """Forget the cached costs: the classifier changed."""
        self._cost_cache.clear()

    def resolution_costs(self, input_shape: tuple[int, ...]) -> list[int]:
        """Per-sample FLOPs of running each resolution at inference: predictor + backbone +
        classifier (what `flops` reports for a sample that chose it)."""
        parts = self.cost_breakdown(input_shape)
        return [parts["predictor"] + b + parts["head"] for b in parts["backbone"]]

    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs with nothing saved: every sample at the largest resolution
        (predictor included). A zero input would count whichever resolution it picked."""
        return float(self.resolution_costs(input_shape)[-1])

    def worst_case_flops(self, input_shape: tuple[int, ...], policy: ResolutionPolicy | None = None) -> float:
        """The most per-sample FLOPs compact inference can cost under `policy`'s cap."""
        costs = self.resolution_costs(input_shape)
        limit = len(costs) - 1 if policy is None else policy.largest_allowed(costs, "dynamic_resolution_resnet")
        return float(costs[limit])

    # -- pieces ------------------------------------------------------------------------------

    def resolution_logits(self, x: Tensor) -> Tensor:
        """The predictor's scores: `(B, C, H, W) -> (B, R)`."""
        return self.predictor(x)

    def _norm(self, index: int) -> int:
        return index if self.private_norms else 0

    def pooled_at(self, x: Tensor, index: int) -> Tensor:
        """Pooled backbone features at resolution `index`: `(n, C, H, W) -> (n, num_features)`."""
        features = run_trunk(self.backbone, resize(x, self.resolutions[index], self.antialias), self._norm(index))
        return features.mean(dim=(2, 3))

    def run_grouped(self, x: Tensor, choice: Tensor) -> Tensor:
        """Compact execution: samples grouped by `choice (B,)`, each group resized once and run
        once at its resolution. Returns pooled features `(B, num_features)`."""
        pieces = [(rows, self.pooled_at(gather_rows(x, rows), i)) for i, rows in group_rows(choice, len(self.resolutions))]
        return assemble_rows(pieces, x.shape[0])

    def run_fused(self, x: Tensor, one_hot: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Masked execution: every resolution on the whole batch, the pooled features mixed by
        `one_hot (B, R)` (elementwise, so the mix costs no FLOPs). Returns the mix `(B, F)` and
        the per-resolution features."""
        per_resolution = [self.pooled_at(x, i) for i in range(len(self.resolutions))]
        weights = one_hot.to(per_resolution[0].dtype)
        mixed = sum(weights[:, i, None] * f for i, f in enumerate(per_resolution))
        return mixed, per_resolution

    def _decide(self, x: Tensor, logits: Tensor, costs: list[int], resolution_index: Tensor | None,
                policy: ResolutionPolicy | None) -> tuple[Tensor, Tensor | None]:
        if resolution_index is not None:
            index = torch.as_tensor(resolution_index, device=x.device).long().flatten()
            if index.shape != (x.shape[0],) or index.numel() and not (
                    0 <= int(index.min()) and int(index.max()) < len(self.resolutions)):
                raise ConfigError(f"dynamic_resolution_resnet: resolution_index must be {x.shape[0]} indices in "
                                  f"[0, {len(self.resolutions)}), got {resolution_index!r}")
            return index, None
        if self.training:
            return logits.argmax(dim=-1), None
        chosen, capped = (policy or ResolutionPolicy()).choose(logits, costs, "dynamic_resolution_resnet")
        return chosen, capped if policy is not None else None

    def _features(self, x: Tensor, execution: ExecutionLike, resolution_index: Tensor | None,
                  policy: ResolutionPolicy | None):
        execution = resolve_execution(execution, self.training)
        parts = self.cost_breakdown(tuple(x.shape[1:]))
        costs = [parts["predictor"] + b + parts["head"] for b in parts["backbone"]]
        logits = self.resolution_logits(x)
        choice, capped = self._decide(x, logits, costs, resolution_index, policy)
        count = len(self.resolutions)
        per_resolution = None
        if execution is Execution.MASKED:
            sampled = self.training and resolution_index is None
            one_hot = self.gumbel(logits) if sampled else F.one_hot(choice, count).to(logits.dtype)
            choice = one_hot.argmax(dim=-1) if sampled else choice
            features, per_resolution = self.run_fused(x, one_hot)
            heads = count + 1 if self.training else 1
            flops = torch.full((x.shape[0],), float(parts["predictor"] + sum(parts["backbone"]) + heads * parts["head"]),
                               dtype=torch.float64, device=x.device)
        else:
            one_hot = None
            features = self.run_grouped(x, choice)
            flops = torch.tensor(costs, dtype=torch.float64, device=x.device)[choice]
        return features, per_resolution, logits, choice, capped, one_hot, flops, costs

    # -- classifier API and forward ----------------------------------------------------------

    def forward_features(self, x: Tensor, execution: ExecutionLike = None, *,
                         resolution_index: Tensor | None = None, policy: ResolutionPolicy | None = None) -> Tensor:
        """`(B, C, H, W) -> (B, num_features, 1, 1)`: each sample's pooled features at its
        resolution (same arguments as `forward`)."""
        return self._features(x, execution, resolution_index, policy)[0][..., None, None]

    def forward(self, x: Tensor, execution: ExecutionLike = None, *,
                resolution_index: Tensor | None = None, policy: ResolutionPolicy | None = None) -> DynamicOutput:
        """Predict a resolution per sample, run the backbone there.

        Args:
            x: `(B, in_chans, H, W)`, `H, W >= max(resolutions)`.
            execution: masked (default in training): every resolution on the whole batch,
                mixed by the one-hot choice (Gumbel-softmax in training); compact (default
                in eval): samples grouped by resolution, each group resized and run once.
            resolution_index: `(B,)` indices into `resolutions` to force (the predictor still
                runs and is reported; its choice is not used).
            policy: the inference decision rule (`ResolutionPolicy`: bias per resolution, cap);
                None = the predictor's argmax. Not used in training.

        Returns:
            `DynamicOutput`: `logits (B, num_classes)`, `flops (B,)` of what ran (masked: the
            predictor + every resolution + the classifier, `R + 1` times in training),
            decisions `resolution_index`, `resolution`, `resolution_logits`, and with a
            policy `resolution_capped (B,)` bool. In training `exit_logits` holds each
            resolution's logits, then the mix; with `cost_weight > 0` an aux loss
            `target_flops`.

        Raises:
            ConfigError: an input smaller than the largest resolution, a bad
                `resolution_index`, a policy that does not fit.
        """
        features, per_resolution, logits_r, choice, capped, one_hot, flops, costs = self._features(
            x, execution, resolution_index, policy)
        head = self.backbone.head
        logits = head(features[..., None, None])
        out = DynamicOutput(logits=logits, flops=flops)
        if self.training and per_resolution is not None:
            out.exit_logits = [head(f[..., None, None]) for f in per_resolution] + [logits]
            if self.cost_weight > 0:
                cost = torch.tensor(costs, dtype=torch.float64, device=x.device)
                expected = (one_hot.to(torch.float64) @ cost).mean() / cost[-1]
                out.aux_losses["target_flops"] = (self.cost_weight * (expected - self.target_flops_ratio).square()
                                                  ).to(logits.dtype)
        out.decisions["resolution_index"] = choice
        out.decisions["resolution"] = torch.tensor(self.resolutions, device=x.device)[choice]
        out.decisions["resolution_logits"] = logits_r
        if capped is not None:
            out.decisions["resolution_capped"] = capped
        return out


@register_model
def dynamic_resolution_resnet(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 20,
    width: int = 16,
    resolutions: tuple[int, ...] = (16, 24, 32),
    input_size: int | None = None,
    private_norms: bool = True,
    predictor_resolution: int = 16,
    predictor_width: int = 8,
    tau: float = 1.0,
    target_flops_ratio: float = 0.5,
    cost_weight: float = 1.0,
    antialias: bool = True,
    device=None,
    dtype=None,
) -> DynamicResolutionNet:
    """CIFAR ResNet run at a per-sample resolution a small predictor picks; see `DynamicResolutionNet`.

    `input_size` defaults to the largest resolution. Defaults (ResNet-20, 3x32x32, resolutions
    16/24/32, 10 classes): 281,797 params (a BatchNorm per resolution); per-sample FLOPs
    20,813,248 / 46,321,088 / 82,032,064 at 16 / 24 / 32 (predictor 405,696 + backbone +
    classifier 1,280), against 81,626,368 for the plain `resnet20`; the masked execution runs
    every resolution, 148,352,448 in eval. Cluttered MNIST: `in_chans=1,
    resolutions=(28, 42, 60)`.
    """
    resolutions = tuple(resolutions) if isinstance(resolutions, (list, tuple)) else resolutions
    sizes = check_resolutions(resolutions, 10**9, "dynamic_resolution_resnet")
    input_size = sizes[-1] if input_size is None else input_size
    require_positive("dynamic_resolution_resnet", input_size=input_size, predictor_resolution=predictor_resolution,
                     predictor_width=predictor_width)
    factory = {"device": device, "dtype": dtype}
    count = len(sizes) if private_norms else 1
    backbone = resolution_resnet(depth, num_classes, in_chans, width, count, **factory)
    predictor = PolicyNetwork(in_chans, len(sizes), resolution=predictor_resolution, width=predictor_width, **factory)
    return DynamicResolutionNet(backbone, predictor, sizes, input_size, private_norms=private_norms, tau=tau,
                                target_flops_ratio=target_flops_ratio, cost_weight=cost_weight, antialias=antialias)
