"""`SpatialGating`: what turns a plain ResNet into a DynConv-style spatially sparse one.

A mixin for a ResNet class that exposes its stem, its residual blocks in order and its
head (`spatial_stem`, `spatial_blocks`, `forward_head`). Every identity-shortcut block
gets a `SpatialMaskGate` on its input; the blocks that change shape (stride 2 or a new
width) run densely. The model keeps the plain ResNet's module names, so a plain
checkpoint loads into it (`init_from` in a training config, or `load_state_dict(...,
strict=False)`): only the gates start fresh.

Per block, the gate's decisions become a `(B, H, W)` mask and `SparseBranch` runs the
block masked (training: dense, output blended by the straight-through mask) or compact
(inference: only the masked positions, by gathered positions or gathered tiles).
Training adds DynConv's FLOPs-budget loss (`gates.flops_budget`) towards `budget`.

Compute cap (a bounded worst case): a `GatePolicy` with `max_density` bounds, at
inference, the fraction of each gated block's decision cells (positions, or tiles with
`gate_tile > 1`) a sample runs: a sample whose gates switch on more than
`floor(max_density * cells)` keeps its highest-scoring ones (`gates.spatial.cap_density`),
in both executions. An input crafted to switch every position on then runs at most that
density in every gated block.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...execution import Execution, resolve_execution
from ...gates.flops_budget import check_budget, flops_budget_loss
from ...gates.spatial import SpatialMaskGate, cap_density, expand_tiles, spatial_decisions
from ...gates.thresholds import GatePolicy
from ...layers.spatial_block import SparseBranch, SparseStrategy, check_spatial_mask, parse_strategy
from ...outputs import DynamicOutput
from .._zero_sample import zero_sample_output
from ..static._checks import check_input_shape


def _keeps_shape(block: nn.Module) -> bool:
    if "downsample" in block._modules or hasattr(block, "downsample"):
        return block.downsample is None  # torchvision layout
    return isinstance(getattr(block, "shortcut", None), nn.Identity)


class SpatialGating:
    """Mixin: spatial gates and sparse execution for a ResNet (see the module docstring).

    The host class provides `spatial_stem(x)`, `spatial_blocks()` (every residual block,
    in order), `forward_head(features)`, `cost_breakdown(input_shape)` (`{"stem", "stages":
    [[per block]], "head"}` per-sample FLOPs), `name` and `in_chans`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)
    uses_training_progress = True
    gates: nn.ModuleList

    def init_spatial_gating(
        self,
        *,
        budget: float = 0.5,
        gate_tile: int = 1,
        gate_kernel: int = 1,
        tau: float = 1.0,
        budget_weight: float = 10.0,
        gate_bias_init: float = 3.0,
        strategy: str | Sequence[str] | None = None,
        sparse_tile: int | None = None,
        gate_noise_end: float = 1.0,
        device=None,
        dtype=None,
    ) -> None:
        """Create the gates; call at the end of the host's `__init__`."""
        owner = f"model {self.name!r}"
        if not (isinstance(gate_tile, int) and not isinstance(gate_tile, bool) and gate_tile >= 1):
            raise ConfigError(f"{owner}: gate_tile must be an int >= 1, got {gate_tile!r}")
        self.budget = check_budget(budget, owner)
        if not tau > 0:
            raise ConfigError(f"{owner}: tau must be > 0, got {tau!r}")
        if not budget_weight >= 0:
            raise ConfigError(f"{owner}: budget_weight must be >= 0, got {budget_weight!r}")
        self.sparse_tile = int(sparse_tile) if sparse_tile is not None else (gate_tile if gate_tile > 1 else 8)
        strategy = strategy or ("tiles" if gate_tile > 1 else "positions")
        self.tau = float(tau)
        if not 0.0 <= gate_noise_end <= 1.0:
            raise ConfigError(f"{owner}: gate_noise_end must be in [0, 1], got {gate_noise_end!r}")
        self.gate_noise_end = float(gate_noise_end)
        self.budget_weight = float(budget_weight)
        blocks = list(self.spatial_blocks())
        self.gated_index = [i for i, b in enumerate(blocks) if _keeps_shape(b)]
        self.branches = {i: SparseBranch(blocks[i], f"{owner} block {i}") for i in self.gated_index}
        chans = [blocks[i].conv1.conv.in_channels if hasattr(blocks[i].conv1, "conv")
                 else blocks[i].conv1.in_channels for i in self.gated_index]
        self.gates = nn.ModuleList(
            SpatialMaskGate(c, gate_tile, gate_kernel, bias_init=gate_bias_init, device=device, dtype=dtype)
            for c in chans
        )
        self.strategies = self.parse_strategies(strategy)
        self._fixed_flops: dict[tuple[int, ...], int] = {}

    def parse_strategies(self, strategy: str | Sequence[str]) -> list[SparseStrategy]:
        """One compact strategy per gated block, from one name or a list of them.

        Raises:
            ConfigError: an unknown name, or a list of the wrong length.
        """
        if isinstance(strategy, (str, SparseStrategy)):
            return [parse_strategy(strategy, self.sparse_tile)] * self.num_gated_blocks
        names = list(strategy)
        if len(names) != self.num_gated_blocks:
            raise ConfigError(f"model {self.name!r}: strategy must be one name or one per gated block "
                              f"({self.num_gated_blocks}), got {len(names)}")
        return [parse_strategy(name, self.sparse_tile) for name in names]

    def spatial_fixed_flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs of the stem, the ungated blocks and the head (cached per input
        shape: every forward needs it)."""
        shape = tuple(input_shape)
        if shape not in self._fixed_flops:
            parts = self.cost_breakdown(shape)
            blocks = [f for stage in parts["stages"] for f in stage]
            gated = set(self.gated_index)
            self._fixed_flops[shape] = parts["stem"] + parts["head"] + sum(
                f for i, f in enumerate(blocks) if i not in gated)
        return self._fixed_flops[shape]

    def classifier_changed(self) -> None:
        """A new head changes the fixed cost: forget the cached one."""
        self._fixed_flops.clear()
        super().classifier_changed()

    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs with every position of every gated block executed, gates
        included (the cost when nothing is skipped; a zero input would count only what its
        gates kept)."""
        everything = GatePolicy.constant(float("-inf"), self.num_gated_blocks)
        return float(zero_sample_output(self, input_shape, policy=everything, strategy="dense").flops[0])

    def check_input(self, x: Tensor) -> None:
        """Raise `ConfigError` unless `x` is a `(B, in_chans, H, W)` batch."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ConfigError(f"model {self.name!r}: expected a (B, {self.in_chans}, H, W) batch, got "
                              f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        check_input_shape(self.name, x.shape[1:], self.in_chans, spatial_dims=2)

    @property
    def num_gated_blocks(self) -> int:
        return len(self.gated_index)

    def gate_logit_layers(self) -> list[nn.Conv2d]:
        """The layers whose outputs are the gate logits, one per gated block."""
        return [gate.conv for gate in self.gates]

    def gate_thresholds(self, policy: GatePolicy | None) -> list[float]:
        """Per-gate inference thresholds (0 without a policy); the policy may set `max_density`."""
        if policy is None:
            return [0.0] * self.num_gated_blocks
        return list(policy.check(self.num_gated_blocks, f"model {self.name!r}", caps=("max_density",)).thresholds)

    def forward_features(self, x: Tensor, **kwargs) -> Tensor:
        """`(B, in_chans, H, W) -> (B, num_features, h, w)`, with `forward`'s keyword arguments."""
        return self._run(x, **kwargs)[0]

    def forward(
        self,
        x: Tensor,
        *,
        masks: Sequence[Tensor] | None = None,
        execution: str | None = None,
        policy: GatePolicy | None = None,
        strategy: str | Sequence[str] | None = None,
        progress: float | None = None,
        generator: torch.Generator | None = None,
    ) -> DynamicOutput:
        """Run the network, each gated block computed only at its masked positions.

        Args:
            x: `(B, in_chans, H, W)`.
            masks: optional decisions to apply instead of the gates' own: one `(B, h, w)`
                mask per gated block, at that block's resolution (the gates are then not
                evaluated and their FLOPs not counted).
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            policy: inference thresholds on the gate logits, one per gated block, and an
                optional `max_density` cap (module docstring; not with `masks`); default
                logit > 0, no cap. Not used in training.
            strategy: compact execution's `"positions"`, `"tiles"` or `"dense"`, one for all
                gated blocks or one per block (default: the model's `strategies`).
            progress: training progress in `[0, 1]` (the trainer passes it) for the
                annealed per-block bounds of the budget loss and the gate-noise schedule
                (`gate_noise_end`); without it only the network-level budget term applies
                and the noise is at full scale.
            generator: optional `torch.Generator` for the Gumbel noise while training.

        Returns:
            `DynamicOutput`: `logits (B, num_classes)`, `flops (B,)` of the path that ran;
            `decisions`: `spatial_mask.{i} (B, h_i, w_i)` bool per gated block,
            `block_density (B, G)`, `density (B,)` (executed fraction of the gated blocks'
            dense FLOPs), `compact_flops (B,)` (what compact execution costs for these
            masks); in training `aux_losses["flops_budget"]`.
        """
        noise = 1.0 if progress is None else 1.0 + (self.gate_noise_end - 1.0) * min(max(progress, 0.0), 1.0)
        features, record = self._run(x, masks=masks, execution=execution, policy=policy,
                                     strategy=strategy, generator=generator, noise_scale=noise)
        logits = self.forward_head(features)
        executed = torch.stack(record["executed"], dim=1) if record["executed"] else logits.new_zeros(x.shape[0], 0)
        full = torch.tensor(record["full"], dtype=executed.dtype, device=executed.device)
        decisions = {f"spatial_mask.{i}": m for i, m in enumerate(record["masks"])}
        decisions["block_density"] = (executed / full).detach()
        decisions["density"] = (executed.sum(1) / full.sum()).detach()
        decisions["compact_flops"] = record["base"] + record["compact"]
        out = DynamicOutput(logits=logits, flops=record["base"] + record["ran"], decisions=decisions)
        if self.training and self.budget_weight > 0 and record["executed"]:
            loss = flops_budget_loss(executed, full, self.budget, progress)
            out.aux_losses["flops_budget"] = self.budget_weight * loss
        return out

    def gated_block_inputs(self, x: Tensor, policy: GatePolicy | None = None) -> list[tuple[Tensor, Tensor]]:
        """`(block input (B, C, h, w), mask (B, h, w) bool)` of every gated block for `x`,
        in eval mode without autograd (what `fastest_block_strategies` times)."""
        was_training = self.training
        seen: list[tuple[Tensor, Tensor]] = []
        try:
            self.eval()
            with torch.no_grad():
                self._run(x, execution=Execution.MASKED, policy=policy, seen=seen)
        finally:
            self.train(was_training)
        return seen

    def _run(self, x: Tensor, *, masks=None, execution=None, policy=None, strategy=None,
             generator=None, seen: list | None = None, noise_scale: float = 1.0) -> tuple[Tensor, dict]:
        self.check_input(x)
        mode = resolve_execution(execution, self.training)
        strategies = self.strategies if strategy is None else self.parse_strategies(strategy)
        cuts = self.gate_thresholds(policy)
        max_density = None if policy is None or self.training else policy.max_density
        if masks is not None and max_density is not None:
            raise ConfigError(f"model {self.name!r}: key 'max_density' keeps the highest-scoring positions of "
                              f"the gates' own decisions; with masks given there are no scores (cap the masks "
                              f"yourself, or leave masks out)")
        if masks is not None and len(masks) != self.num_gated_blocks:
            raise ConfigError(f"model {self.name!r}: masks must hold one (B, h, w) mask per gated block "
                              f"({self.num_gated_blocks}), got {len(masks)}")
        batch = x.shape[0]
        zeros = torch.zeros(batch, dtype=torch.float64, device=x.device)
        record = {"masks": [], "executed": [], "full": [], "compact": zeros.clone(), "ran": zeros.clone(),
                  "base": zeros + float(self.spatial_fixed_flops(tuple(x.shape[1:])))}
        inplace = mode is Execution.COMPACT and not torch.is_grad_enabled()
        h = self.spatial_stem(x)
        gate_of = {block: g for g, block in enumerate(self.gated_index)}
        for index, block in enumerate(self.spatial_blocks()):
            if index not in gate_of:
                h = block(h)
                continue
            g = gate_of[index]
            height, width = h.shape[-2:]
            if masks is not None:
                mask = check_spatial_mask(masks[g], h, f"model {self.name!r} masks[{g}]")
            else:
                gate = self.gates[g]
                logits = gate(h)
                decided = spatial_decisions(logits, training=self.training, threshold=cuts[g],
                                            tau=self.tau, noise_scale=noise_scale, generator=generator)
                decided = cap_density(logits, decided, max_density)
                mask = expand_tiles(decided, gate.tile, height, width)
                record["base"] += gate.flops(height, width)
            branch = self.branches[index]
            full = branch.full_flops(height, width)
            hard = mask.detach() > 0.5 if mask.dtype != torch.bool else mask
            record["masks"].append(hard)
            record["full"].append(float(full))
            record["executed"].append(mask.to(h.dtype).flatten(1).mean(1) * full)
            if seen is not None:
                seen.append((h.clone(memory_format=torch.channels_last), hard))
            strat = strategies[g]
            if mode is Execution.COMPACT:
                h, compact = branch.run_counted(h, mask, mode, strategy=strat, tile=self.sparse_tile,
                                                inplace=inplace)
                record["ran"] += compact
            else:
                compact = branch.flops(hard, Execution.COMPACT, strategy=strat, tile=self.sparse_tile)
                record["ran"] += float(full)
                h = branch(h, mask, mode, strategy=strat, tile=self.sparse_tile)
            record["compact"] += compact
        return h, record
