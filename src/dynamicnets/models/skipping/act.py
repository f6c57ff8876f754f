"""Adaptive computation time over the residual blocks of each stage: ACT (Graves, "Adaptive
Computation Time for Recurrent Neural Networks", 2016) as applied to ResNets by SACT
(Figurnov, Collins, Zhu, Zhang, Huang, Vetrov, Salakhutdinov, "Spatially Adaptive
Computation Time for Residual Networks", CVPR 2017).

In each stage of `n` blocks, block `l` (output `x_l`) is followed by a halting unit giving
`h_l` in `(0, 1)` (none after the last block, where `h_n = 1`). Blocks run until the
cumulative halting score reaches `1 - eps`: `N = min{k : h_1 + ... + h_k >= 1 - eps}`.
The stage's output is `sum_{l < N} h_l x_l + R x_N` with the remainder
`R = 1 - sum_{l < N} h_l`, and the ponder cost `N + R` (whose gradient reaches the
halting units through `R`) is added as `ponder_weight * mean(sum over stages)` to
`aux_losses["ponder"]` in training. The first block of every stage always runs.

- `act_resnet` (`spatial=False`): one halting score per sample, `h = sigmoid(w . pool(x) + b)`.
- `sact_resnet` (`spatial=True`): one per spatial position,
  `h = sigmoid(conv3x3(x) + w . pool(x) + b)`; each position has its own `N`, `R` and
  weights, and the ponder cost is averaged over positions.

Execution: `masked` runs every block on the whole batch (training); `compact` runs block
`l` only on the samples that still have a running position (gather, compute, scatter-add
the weighted output into the stage's output). SACT's per-position halting is **not**
turned into per-position execution: a block that runs for a sample runs at all its
positions (no sparse convolution), so `flops` counts every position of each executed
block, the honest cost of what ran. `decisions["position_depth"]` gives the mean number
of blocks per position, what a per-position sparse execution could reach; the spatial
family's `sact_resnet20/32` (`dynamicnets.models.spatial.sact`) is that execution: blocks
run only at the positions that have not halted.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...compact import add_rows, rows_where, scatter_rows
from ...execution import Execution, ExecutionLike, resolve_execution
from ...outputs import DynamicOutput
from ...flops import conv2d_flops, linear_flops
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import require_positive
from ..static.resnet_cifar import CifarResNet


class HaltingUnit(nn.Module):
    """Halting score from a block's output: per sample (ACT) or per position (SACT).

    Args:
        chans: channels of the block output.
        spatial: add a 3x3 convolution for a per-position score.
        bias_init: initial bias (negative: halt late, every block runs at first).

    Shapes:
        `(B, chans, H, W) -> (B,)` (ACT) or `(B, H, W)` (SACT) scores in `(0, 1)`.
    """

    def __init__(
        self, chans: int, spatial: bool, *, bias_init: float = -3.0, device=None, dtype=None
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.spatial = spatial
        self.fc = nn.Linear(chans, 1, **factory)
        nn.init.constant_(self.fc.bias, bias_init)
        self.conv = nn.Conv2d(chans, 1, 3, padding=1, bias=False, **factory) if spatial else None
        if self.conv is not None:
            nn.init.normal_(self.conv.weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        logit = self.fc(x.mean(dim=(2, 3)))
        if self.conv is None:
            return torch.sigmoid(logit.squeeze(1))
        return torch.sigmoid(self.conv(x).squeeze(1) + logit.view(-1, 1, 1))

    def flops(self, shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs on a `(chans, H, W)` block output."""
        total = linear_flops(self.fc)
        if self.conv is not None:
            total += conv2d_flops(self.conv, shape[1], shape[2])[0]
        return total


class HaltingState:
    """Running ACT bookkeeping of one stage, per sample or per position (no parameters).

    Args:
        like: `(B,)` (ACT) or `(B, H, W)` (SACT) tensor giving the shape, dtype, device.
        eps: a position halts once its cumulative score reaches `1 - eps`.

    Attributes:
        cum: cumulative score, shaped like `like` (as are all the attributes below).
        running: bool, not halted yet.
        count: blocks run, `N` once halted.
        remainder: `R` once halted.
    """

    def __init__(self, like: Tensor, eps: float) -> None:
        self.eps = eps
        self.cum = torch.zeros_like(like)
        self.running = torch.ones_like(like, dtype=torch.bool)
        self.count = torch.zeros_like(like)
        self.remainder = torch.zeros_like(like)

    def step(self, rows: Tensor | None, h: Tensor | None) -> Tensor:
        """Fold in one block's halting scores.

        Args:
            rows: `(K,)` indices of the samples that ran the block, or `None` for all.
            h: `(K, *P)` halting scores of those samples, or `None` for the last block
                of the stage (`h_n = 1`: every running position halts).

        Returns:
            `(K, *P)` weight of the block's output in the stage's output:
            `h` while running, the remainder `1 - cum` at the halting block, 0 after.
        """
        take = (lambda t: t) if rows is None else (lambda t: t[rows])
        cum, running = take(self.cum), take(self.running)
        rest = 1 - cum
        if h is None:
            new_cum, halts, weight_if_running = cum, running, rest
        else:
            new_cum = cum + h
            halts = running & (new_cum >= 1 - self.eps)
            weight_if_running = h
        weight = torch.where(running, torch.where(halts, rest, weight_if_running), 0)
        updates = {
            "cum": new_cum,
            "count": take(self.count) + running.to(cum.dtype),
            "remainder": take(self.remainder) + torch.where(halts, rest, 0),
            "running": running & ~halts,
        }
        for name, value in updates.items():
            full = getattr(self, name)
            setattr(self, name, value if rows is None else scatter_rows(full, rows, value))
        return weight

    def halt(self, stop: Tensor, last: Tensor) -> Tensor:
        """Halt the running positions `stop` now, before the next block (a compute cap).

        The block each of them ran last becomes its `N`: its output's weight grows from
        `h_N` to the remainder `R = 1 - sum_{l < N} h_l` (the weights still sum to 1).

        Args:
            stop: bool, shaped like `running`; positions not running are left alone.
            last: the halting scores `h_N` of the block they ran last, shaped like `cum`.

        Returns:
            the weight to add to that block's output in the stage's output: `1 - cum`
            where halted now, 0 elsewhere.
        """
        stop = stop & self.running
        extra = torch.where(stop, 1 - self.cum, 0)
        self.remainder = self.remainder + torch.where(stop, extra + last, 0)
        self.running = self.running & ~stop
        return extra


def _expand(weight: Tensor, like: Tensor) -> Tensor:
    """`(B,)` or `(B, H, W)` weights -> broadcastable against `(B, C, H, W)`."""
    return weight.view(-1, 1, 1, 1) if weight.dim() == 1 else weight.unsqueeze(1)


class ACTResNet(ClassifierApi, nn.Module):
    """CIFAR ResNet with adaptive computation time over the blocks of each stage.

    Args:
        depth: `6n + 2` with `n >= 2`.
        num_classes, in_chans, width: as for `CifarResNet`.
        spatial: per-position halting (SACT) instead of per-sample (ACT).
        ponder_weight: `tau`, weight of the ponder cost.
        eps: halting threshold is `1 - eps`.
        halting_bias_init: initial bias of the halting units.

    Attributes:
        backbone: the `CifarResNet`.
        halting: `nn.ModuleList` per stage of `n - 1` `HaltingUnit`s.
        num_gated_blocks: `3 (n - 1)`, the blocks that can be left out.
        default_input_shape: the per-sample input shape the model is built for.

    Shapes:
        `forward(x (B, in_chans, H, W)) -> DynamicOutput` with `logits (B, num_classes)`,
        `flops (B,)` and `decisions`: `depth (B, 3)` blocks run per stage, `gates (B, G)`
        whether each block after the first of a stage ran, `executed_fraction (B,)`,
        `ponder (B,)` (`N + R` summed over stages, averaged over positions for SACT),
        `compact_flops (B,)`, and for SACT `position_depth (B, 3)`; in training
        `aux_losses["ponder"]`.

    Classifier API (`dynamicnets.models.ClassifierApi`): the backbone's head and
    classifier; `forward_features(x, execution=None)` returns the halting-weighted
    features `(B, 4 width, H/4, W/4)` of that forward (it runs the forward: halting and
    blocks are interleaved).
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)
    head_path = "backbone.head"
    classifier_paths = ("backbone.head.fc",)

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        *,
        spatial: bool = False,
        ponder_weight: float = 0.01,
        eps: float = 0.01,
        halting_bias_init: float = -3.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        name = "sact_resnet" if spatial else "act_resnet"
        require_positive(name, depth=depth, num_classes=num_classes, in_chans=in_chans, width=width)
        if (depth - 2) % 6 != 0 or depth < 14:
            raise ConfigError(
                f"model {name!r}: depth must be 6n + 2 with n >= 2 (14, 20, 32, 56, 110, ...), "
                f"got {depth}"
            )
        if ponder_weight < 0 or not 0 < eps < 1:
            raise ConfigError(
                f"model {name!r}: need ponder_weight >= 0 and 0 < eps < 1, got {ponder_weight!r}, {eps!r}"
            )
        factory = {"device": device, "dtype": dtype}
        self.name = name
        self.spatial = bool(spatial)
        self.ponder_weight = float(ponder_weight)
        self.eps = float(eps)
        self.backbone = CifarResNet(depth, num_classes, in_chans, width, **factory)
        self.default_input_shape = self.backbone.default_input_shape
        self.halting = nn.ModuleList(
            nn.ModuleList(
                HaltingUnit(blocks[0].conv2.conv.out_channels, self.spatial,
                            bias_init=halting_bias_init, **factory)
                for _ in range(len(blocks) - 1)
            )
            for blocks in self.backbone.stages
        )
        self.num_gated_blocks = sum(len(units) for units in self.halting)

    def unit_costs(self, input_shape: tuple[int, ...]) -> tuple[int, list[list[int]]]:
        """Per-sample FLOPs on a `(in_chans, H, W)` input.

        Returns:
            `(fixed, stages)`: `fixed` = stem + head; `stages[s][l]` = block `l` of stage
            `s` plus its halting unit (none after the last block).
        """
        parts = self.backbone.cost_breakdown(input_shape)
        shape = self.backbone.stem.flops_and_shape(tuple(input_shape))[1]
        stages = []
        for s, blocks in enumerate(self.backbone.stages):
            costs = []
            for l, block in enumerate(blocks):
                shape = block.flops_and_shape(shape)[1]
                halt = self.halting[s][l].flops(shape) if l < len(blocks) - 1 else 0
                costs.append(parts["stages"][s][l] + halt)
            stages.append(costs)
        return parts["stem"] + parts["head"], stages

    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs with every block and halting unit run (nothing halts) on a
        `(in_chans, H, W)` input."""
        fixed, stages = self.unit_costs(tuple(input_shape))
        return float(fixed + sum(sum(costs) for costs in stages))

    def _run_stage(self, s: int, x: Tensor, execution: str) -> tuple[Tensor, HaltingState]:
        """One stage: `(B, C, H, W)` in -> the halting-weighted output and its bookkeeping."""
        blocks, units = self.backbone.stages[s], self.halting[s]
        rows: Tensor | None = None  # samples still running (None: all of them, masked)
        out: Tensor | None = None
        halting: HaltingState | None = None
        inplace = not torch.is_grad_enabled()  # accumulate into `out` without a new tensor per block
        for l, block in enumerate(blocks):
            x = block(x)
            h = units[l](x) if l < len(units) else None
            if halting is None:
                like = x.new_zeros(x.shape[0]) if not self.spatial else x.new_zeros(
                    x.shape[0], *x.shape[2:])
                halting = HaltingState(like, self.eps)
            weight = _expand(halting.step(rows, h), x)
            if out is None:  # the first block: every sample runs it
                out = weight * x
            elif rows is None:
                out = out.addcmul_(weight, x) if inplace else out + weight * x
            else:
                out = add_rows(out, rows, weight * x, inplace=inplace)
            if execution is Execution.COMPACT:
                running = halting.running if rows is None else halting.running[rows]
                active = running.reshape(running.shape[0], -1).any(dim=1)
                if not bool(active.all()):
                    keep = rows_where(active)
                    rows = keep if rows is None else rows[keep]
                    if rows.numel() == 0:
                        break
                    x = x[keep]
        return out, halting

    def forward(self, x: Tensor, *, execution: ExecutionLike = None) -> DynamicOutput:
        """Run the network, each stage halting per sample (ACT) or per position (SACT).

        Args:
            x: `(B, in_chans, H, W)`.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        execution = resolve_execution(execution, self.training)
        fixed, costs = self.unit_costs(tuple(x.shape[1:]))
        h = self.backbone.stem(x)
        depth, ponder, position_depth = [], 0, []
        for s in range(len(self.backbone.stages)):
            h, halting = self._run_stage(s, h, execution)
            per_sample = halting.count.reshape(x.shape[0], -1)  # (B, positions), 1 for ACT
            depth.append(per_sample.amax(dim=1))
            position_depth.append(per_sample.mean(dim=1))
            ponder = ponder + (halting.count + halting.remainder).reshape(x.shape[0], -1).mean(dim=1)
        logits = self.backbone.head(h)
        depth_t = torch.stack(depth, dim=1).detach().round().long()  # (B, 3)
        out = DynamicOutput(logits=logits, flops=self._flops(fixed, costs, depth_t, execution))
        n = [len(blocks) for blocks in self.backbone.stages]
        gates = torch.cat(
            [(depth_t[:, s : s + 1] > torch.arange(1, n[s], device=x.device)) for s in range(len(n))],
            dim=1,
        ).to(logits.dtype)
        out.decisions.update({
            "depth": depth_t,
            "gates": gates,
            "executed_fraction": gates.mean(dim=1),
            "ponder": ponder.detach(),
            "compact_flops": self._flops(fixed, costs, depth_t, "compact"),
        })
        if self.spatial:
            out.decisions["position_depth"] = torch.stack(position_depth, dim=1).detach()
        if self.training and self.ponder_weight > 0:
            out.aux_losses["ponder"] = self.ponder_weight * ponder.mean()
        return out

    def _flops(self, fixed: int, costs: list[list[int]], depth: Tensor, execution: str) -> Tensor:
        """`(B,)` float64 per-sample FLOPs for blocks run per stage `depth` `(B, 3)`."""
        total = torch.full((depth.shape[0],), float(fixed), dtype=torch.float64, device=depth.device)
        for s, stage_costs in enumerate(costs):
            cumulative = torch.tensor([0.0, *stage_costs], dtype=torch.float64).cumsum(0).to(depth.device)
            used = depth[:, s] if execution == "compact" else torch.full_like(depth[:, s], len(stage_costs))
            total = total + cumulative[used]
        return total


def _act_resnet(spatial: bool, depth, num_classes, in_chans, width, ponder_weight, eps,
                halting_bias_init, device, dtype) -> ACTResNet:
    return ACTResNet(
        depth, num_classes, in_chans, width, spatial=spatial, ponder_weight=ponder_weight,
        eps=eps, halting_bias_init=halting_bias_init, device=device, dtype=dtype,
    )


@register_model
def act_resnet(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 110,
    width: int = 16,
    ponder_weight: float = 0.01,
    eps: float = 0.01,
    halting_bias_init: float = -3.0,
    device=None,
    dtype=None,
) -> ACTResNet:
    """ACT over the blocks of each stage, one halting score per sample; see `ACTResNet`."""
    return _act_resnet(False, depth, num_classes, in_chans, width, ponder_weight, eps,
                       halting_bias_init, device, dtype)


@register_model
def sact_resnet(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 110,
    width: int = 16,
    ponder_weight: float = 0.01,
    eps: float = 0.01,
    halting_bias_init: float = -3.0,
    device=None,
    dtype=None,
) -> ACTResNet:
    """SACT: ACT with a halting score per spatial position; see `ACTResNet` (the FLOPs
    count whole blocks for every sample that runs them: no per-position execution)."""
    return _act_resnet(True, depth, num_classes, in_chans, width, ponder_weight, eps,
                       halting_bias_init, device, dtype)
