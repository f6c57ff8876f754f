"""Spatially Adaptive Computation Time ResNets for CIFAR (Figurnov, Collins, Zhu, Zhang,
Huang, Vetrov, Salakhutdinov, "Spatially Adaptive Computation Time for Residual
Networks", CVPR 2017), with the per-position halting turned into per-position execution.

In each stage of `n` residual blocks, block `l` is followed by a halting unit giving a
score `h_l(p)` in `(0, 1)` at every position `p` of its output (none after the last
block, where `h_n = 1`). A position runs blocks until its cumulative score reaches
`1 - eps`: `N(p) = min{k : h_1(p) + ... + h_k(p) >= 1 - eps}`. The stage's output at
`p` is `sum_{l < N} h_l(p) x_l(p) + R(p) x_N(p)` with the remainder
`R(p) = 1 - sum_{l < N} h_l(p)`, and the ponder cost `N(p) + R(p)`, averaged over
positions and summed over stages, is added as `ponder_weight * mean over the batch` to
`aux_losses["ponder"]` in training (its gradient reaches the halting units through `R`
and the weights `h_l`). The first block of a stage (stride 2 and new width in stages 2
and 3) always runs at every position; blocks 2..n are the gated blocks.

Block input at a halted position: as in the paper, a block leaves a halted position
unchanged (its features are carried over: `x_l(p) = x_{l-1}(p)`), and the blocks after
it read those carried features where a running neighbour's 3x3 window covers `p`. Both
execution paths use this definition, so they agree:

- `Execution.MASKED` (training, reference): every block runs densely on the whole
  batch and `x_l = x_{l-1} + m_l * (block_l(x_{l-1}) - x_{l-1})` with `m_l` the hard
  still-running mask; the halting units run densely; no host syncs.
- `Execution.COMPACT` (inference): block `l` runs only at the still-running positions
  of every sample (`SparseBranch`, positions strategy: gathered rows, one matrix
  product per convolution, the first convolution on the mask grown by one position for
  the second one's 3x3 window), and its halting unit's 3x3 convolution only there
  (`sact_halting.halting_at_positions`). Halted positions keep their accumulated
  output. Once nothing in the batch runs, the rest of the stage is skipped.

The halting unit is the paper's (ACT's `HaltingUnit` with `spatial=True`): a 3x3
convolution of the block output plus a linear term of its global average pool. The pool
reads the whole map, which the compact path has (carried features where halted).

At inference the halting threshold `1 - eps` may be replaced per stage by a
`GatePolicy` with one threshold per stage (`model(x, policy=...)`): a position halts
once its cumulative score is `>= thresholds[s]`; `-inf` halts every position after the
first block, `+inf` runs every block.

Compute cap (a bounded worst case): the policy may set `max_density`; at inference each
gated block then runs at no more than `floor(max_density * H * W)` positions per sample.
Where more are still running, the ones furthest from halting (lowest cumulative score)
keep running and the rest halt before the block (`HaltingState.halt`: the block they
ran last takes the remainder), in both executions. An input crafted never to halt then
runs at most that density in every gated block.

The module names are the plain `resnet{depth}`'s plus `halting`, so a plain CIFAR ResNet
checkpoint loads into it (`load_state_dict(..., strict=False)`; only the halting units
start fresh).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...gates.spatial import cap_density
from ...gates.thresholds import GatePolicy
from ...layers.spatial_block import SparseBranch
from ...outputs import DynamicOutput
from .._registry import register_model
from ..skipping.act import HaltingState, HaltingUnit
from ..static._checks import check_input_shape, require_positive
from ..static.resnet_cifar import CifarResNet
from .sact_halting import halting_at_positions, halting_flops


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class SACTResNet(CifarResNet):
    """CIFAR ResNet with SACT per-position halting and sparse inference (module docstring).

    Args:
        depth: `6n + 2` with `n >= 2` (20, 32, 56, 110, ...).
        num_classes, in_chans, width: as for `CifarResNet`.
        ponder_weight: `tau`, the weight of the ponder cost, `>= 0`.
        eps: positions halt once their cumulative score reaches `1 - eps`; in `(0, 1)`.
        halting_bias_init: initial bias of the halting units (-3: every block runs at first).

    Attributes:
        halting: `nn.ModuleList` per stage of `n - 1` `HaltingUnit`s (after blocks 1..n-1).
        branches: per stage, the `SparseBranch` of each gated block (blocks 2..n).
        num_gated_blocks: `3 (n - 1)`.

    Shapes:
        `forward(x (B, in_chans, H, W)) -> DynamicOutput` with `logits (B, num_classes)`,
        `flops (B,)` of the path that ran and `decisions`: `ponder_map.{s} (B, h_s, w_s)`
        (`N + R` per position of stage `s`), `ponder (B,)` (their means summed over the
        stages), `density (B,)` (executed fraction of the gated blocks' dense FLOPs:
        running positions over all positions, block FLOPs weighted), `compact_flops (B,)`
        (what compact execution costs for these decisions); in training
        `aux_losses["ponder"]`. `forward_features(x, **kwargs)` gives the halting-weighted
        `(B, 4 width, h, w)` output of the last stage.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(self, depth: int = 32, num_classes: int = 10, in_chans: int = 3, width: int = 16, *,
                 ponder_weight: float = 0.01, eps: float = 0.01, halting_bias_init: float = -3.0,
                 device=None, dtype=None) -> None:
        name = f"sact_resnet{depth}"
        require_positive(name, depth=depth)
        if (depth - 2) % 6 != 0 or depth < 14:
            raise ConfigError(f"model {name!r}: depth must be 6n + 2 with n >= 2 (14, 20, 32, 56, 110, ...), "
                              f"got {depth}")
        if not (_is_real(eps) and 0 < eps < 1):
            raise ConfigError(f"model {name!r}: eps must be a number in (0, 1) (a position halts once its "
                              f"cumulative halting score reaches 1 - eps), got {eps!r}")
        if not (_is_real(ponder_weight) and math.isfinite(ponder_weight) and ponder_weight >= 0):
            raise ConfigError(f"model {name!r}: ponder_weight must be a finite number >= 0, got {ponder_weight!r}")
        if not (_is_real(halting_bias_init) and math.isfinite(halting_bias_init)):
            raise ConfigError(f"model {name!r}: halting_bias_init must be a finite number, "
                              f"got {halting_bias_init!r}")
        super().__init__(depth, num_classes, in_chans, width, device=device, dtype=dtype)
        self.name = name
        self.ponder_weight = float(ponder_weight)
        self.eps = float(eps)
        self.halting = nn.ModuleList(
            nn.ModuleList(
                HaltingUnit(blocks[0].conv2.conv.out_channels, True, bias_init=float(halting_bias_init),
                            device=device, dtype=dtype)
                for _ in range(len(blocks) - 1)
            )
            for blocks in self.stages
        )
        self.branches = [
            [SparseBranch(block, f"model {name!r} stage {s} block {l}") for l, block in enumerate(blocks) if l > 0]
            for s, blocks in enumerate(self.stages)
        ]
        self.num_gated_blocks = sum(len(b) for b in self.branches)

    def check_input(self, x: Tensor) -> None:
        """Raise `ConfigError` unless `x` is a `(B, in_chans, H, W)` batch."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ConfigError(f"model {self.name!r}: expected a (B, {self.in_chans}, H, W) batch, got "
                              f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        check_input_shape(self.name, x.shape[1:], self.in_chans, spatial_dims=2)

    def halting_thresholds(self, policy: GatePolicy | None) -> list[float]:
        """Per-stage halting thresholds: `policy`'s, else `1 - eps` for every stage.

        Raises:
            ConfigError: `policy` is not a `GatePolicy` with one threshold per stage.
        """
        stages = len(self.stages)
        if policy is None:
            return [1.0 - self.eps] * stages
        if not isinstance(policy, GatePolicy):
            raise ConfigError(f"model {self.name!r}: policy must be a GatePolicy with one halting threshold "
                              f"per stage ({stages}), got {type(policy).__name__}")
        owner = f"model {self.name!r} (one halting threshold per stage)"
        return list(policy.check(stages, owner, caps=("max_density",)).thresholds)

    def _fixed_and_dense(self, input_shape: tuple[int, ...]) -> tuple[int, int]:
        """Per-sample FLOPs `(always run, dense)`: stem, head, every stage's first block
        and first halting unit; and everything (every block and halting unit)."""
        parts = self.cost_breakdown(input_shape)
        shape = self.stem.flops_and_shape(tuple(int(s) for s in input_shape))[1]
        fixed = dense = parts["stem"] + parts["head"]
        for s, blocks in enumerate(self.stages):
            shape = blocks[0].flops_and_shape(shape)[1]
            units = [unit.flops(shape) for unit in self.halting[s]]
            fixed += parts["stages"][s][0] + units[0]
            dense += sum(parts["stages"][s]) + sum(units)
        return fixed, dense

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs of the dense (masked) forward on a `(in_chans, H, W)` input:
        every block and every halting unit (`cost_breakdown` stays the plain ResNet's)."""
        return self._fixed_and_dense(input_shape)[1]

    def forward_features(self, x: Tensor, **kwargs) -> Tensor:
        """`(B, in_chans, H, W) -> (B, 4 width, h, w)` halting-weighted features, with
        `forward`'s keyword arguments."""
        return self._run(x, **kwargs)[0]

    def forward(self, x: Tensor, *, execution: ExecutionLike = None,
                policy: GatePolicy | None = None) -> DynamicOutput:
        """Run the network, each stage halting per position.

        Args:
            x: `(B, in_chans, H, W)`.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            policy: inference halting thresholds, one per stage (default `1 - eps`), and
                an optional `max_density` cap (module docstring); checked always, used
                only in eval mode.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        features, record = self._run(x, execution=execution, policy=policy)
        logits = self.forward_head(features)
        maps = record["ponder_maps"]
        ponder = sum(m.flatten(1).mean(dim=1) for m in maps)
        decisions = {f"ponder_map.{s}": m.detach() for s, m in enumerate(maps)}
        decisions.update({
            "ponder": ponder.detach(),
            "density": record["executed"] / record["full"],
            "compact_flops": record["compact"],
        })
        out = DynamicOutput(logits=logits, flops=record["ran"], decisions=decisions)
        if self.training and self.ponder_weight > 0:
            out.aux_losses["ponder"] = self.ponder_weight * ponder.mean()
        return out

    def _run(self, x: Tensor, *, execution: ExecutionLike = None,
             policy: GatePolicy | None = None) -> tuple[Tensor, dict]:
        self.check_input(x)
        mode = resolve_execution(execution, self.training)
        checked = self.halting_thresholds(policy)
        thresholds = self.halting_thresholds(None) if self.training else checked
        max_density = None if policy is None or self.training else policy.max_density
        fixed = float(self._fixed_and_dense(tuple(x.shape[1:]))[0])
        zeros = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        record = {"ran": zeros + fixed, "compact": zeros + fixed, "executed": zeros.clone(), "full": 0.0,
                  "ponder_maps": []}
        h = self.stem(x)
        for s in range(len(self.stages)):
            h = self._run_stage(s, h, mode, thresholds[s], record, max_density)
        return h, record

    def _run_stage(self, s: int, x: Tensor, mode: Execution, threshold: float, record: dict,
                   max_density: float | None = None) -> Tensor:
        """Stage `s`: `(B, C, H, W)` in -> its halting-weighted output; fills `record`.
        With `max_density`, the positions over the cap halt before each gated block."""
        blocks, units = self.stages[s], self.halting[s]
        compact = mode is Execution.COMPACT
        inplace = compact and not torch.is_grad_enabled()
        x = blocks[0](x)
        score = units[0](x)
        state = HaltingState(score, 1.0 - threshold)
        out = state.step(None, score).unsqueeze(1) * x
        for l, branch in enumerate(self.branches[s], start=1):
            if max_density is not None:  # keep the positions furthest from halting
                kept = cap_density(-state.cum, state.running, max_density)
                extra = state.halt(state.running & ~kept, score).unsqueeze(1)
                out = out.addcmul_(extra, x) if inplace else out + extra * x
            running = state.running  # (B, H, W): the positions block l runs at
            unit = units[l] if l < len(units) else None  # none after the last block
            with torch.no_grad():  # costs: no graph through the folded weights
                full = float(branch.full_flops(*x.shape[-2:]))
                sparse = branch.flops(running, Execution.COMPACT)
                full_unit = 0.0
                if unit is not None:
                    sparse = sparse + halting_flops(unit, running)
                    full_unit = float(unit.flops(tuple(x.shape[1:])))
                record["compact"] += sparse
                record["ran"] += sparse if compact else full + full_unit
                record["executed"] += running.flatten(1).to(torch.float64).mean(dim=1) * full
                record["full"] += full
            if compact and not bool(running.any()):
                continue  # every position of the batch has halted
            x = branch(x, running, mode, inplace=inplace)
            if unit is None:
                score = None
            else:
                score = halting_at_positions(unit, x, running) if compact else unit(x)
            weight = state.step(None, score).unsqueeze(1)
            out = out.addcmul_(weight, x) if inplace else out + weight * x
        record["ponder_maps"].append(state.count + state.remainder)
        return out


def _sact(depth: int, **kwargs) -> SACTResNet:
    return SACTResNet(depth, **kwargs)


@register_model
def sact_resnet20(*, num_classes: int = 10, in_chans: int = 3, width: int = 16, ponder_weight: float = 0.01,
                  eps: float = 0.01, halting_bias_init: float = -3.0, device=None, dtype=None) -> SACTResNet:
    """SACT ResNet-20 for CIFAR, per-position halting run sparsely at inference; see `SACTResNet`.

    3x32x32, 10 classes: 274,720 params, 82,659,008 FLOPs dense (every block and halting unit).
    """
    return _sact(20, **locals())


@register_model
def sact_resnet32(*, num_classes: int = 10, in_chans: int = 3, width: int = 16, ponder_weight: float = 0.01,
                  eps: float = 0.01, halting_bias_init: float = -3.0, device=None, dtype=None) -> SACTResNet:
    """SACT ResNet-32 for CIFAR, per-position halting run sparsely at inference; see `SACTResNet`.

    3x32x32, 10 classes: 471,398 params, 140,314,752 FLOPs dense (every block and halting unit).
    """
    return _sact(32, **locals())
