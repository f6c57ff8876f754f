"""A residual block that runs only at chosen positions: masked for training, sparse
(positions or tiles) for inference.

`SparseBranch` wraps an identity-shortcut residual block (its modules keep their names,
so a plain ResNet's weights load unchanged) and applies a spatial decision `mask`
`(B, H, W)` to it:

- `Execution.MASKED`: the block runs densely and `x + m * (block(x) - x)` keeps its
  output where `m = 1` and the input where `m = 0`. `m` may be a straight-through or soft
  mask; gradients reach the gate. This is the training path and the reference.
- `Execution.COMPACT` with strategy `"positions"`: `run_at_positions`, gathered rows
  and matrix products over the active positions of the whole batch.
- `Execution.COMPACT` with strategy `"tiles"`: `run_on_tiles`, dense convolutions on the
  active tiles with their halo.
- `Execution.COMPACT` with strategy `"dense"`: the whole block, then `where(mask, block(x),
  x)`. Where gathering costs more than it saves (few channels, high density, small maps:
  a CIFAR block with 16 channels runs slower sparse than dense on a CPU), this is the
  fastest exact execution; `dynamicnets.inference.fastest_block_strategies` measures
  which strategy wins for each block on the machine at hand.

For the same hard mask all three give the same output (up to float rounding: the sparse
paths use the BatchNorm folded into the convolutions, inference statistics only).
"""
from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..execution import Execution, parse_execution
from .conv_chain import FoldedSteps, branch_layers
from .sparse_positions import position_sets, run_at_positions, sparse_chain_flops
from .sparse_tiles import run_on_tiles, sparse_tile_flops


class SparseStrategy(str, Enum):
    """How compact execution gathers the active part of a feature map."""

    POSITIONS = "positions"
    TILES = "tiles"
    DENSE = "dense"

    def __str__(self) -> str:
        return self.value


def parse_strategy(strategy: SparseStrategy | str, tile: int | None = None) -> SparseStrategy:
    """`strategy` as a `SparseStrategy`; `tile` checked when it is `"tiles"`.

    Raises:
        ConfigError: an unknown name, or tiles without a tile size >= 1.
    """
    try:
        parsed = SparseStrategy(strategy)
    except ValueError:
        names = ", ".join(repr(s.value) for s in SparseStrategy)
        raise ConfigError(f"sparse strategy must be one of {names}, got {strategy!r}") from None
    if parsed is SparseStrategy.TILES and not (isinstance(tile, int) and not isinstance(tile, bool) and tile >= 1):
        raise ConfigError(f"the 'tiles' strategy needs a tile size >= 1, got {tile!r}")
    return parsed


def check_spatial_mask(mask: Tensor, x: Tensor, owner: str) -> Tensor:
    """`mask` after checking it is a `(B, H, W)` decision for the `(B, C, H, W)` input `x`.

    Raises:
        ConfigError: naming `owner`, for another shape or a complex dtype.
    """
    expected = (x.shape[0], *x.shape[2:])
    if not isinstance(mask, Tensor) or tuple(mask.shape) != expected or mask.is_complex():
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ConfigError(f"{owner}: expected a spatial mask of shape (B, H, W) = {expected} "
                         f"for an input of shape {tuple(x.shape)}, got {got}")
    return mask


class SparseBranch:
    """Masked and sparse execution of one identity-shortcut residual block.

    Not an `nn.Module`: it holds a reference to `block` (which stays where the model
    registered it) and its folded convolutions.

    Args:
        block: the residual block (see `conv_chain.branch_layers` for the layouts read).
        name: used in error messages.
    """

    def __init__(self, block: nn.Module, name: str = "block") -> None:
        self.block = block
        self.name = name
        self.folded = FoldedSteps(branch_layers(block))

    def _hard(self, mask: Tensor) -> Tensor:
        if mask.dtype == torch.bool:
            return mask
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ConfigError(f"{self.name}: compact execution needs a hard (0/1) spatial mask, got soft values")
        return mask > 0.5

    def full_flops(self, height: int, width: int) -> int:
        """Per-sample FLOPs of the dense block on an `H x W` map."""
        return sum(self.folded.chain_flops_per_position()) * height * width

    def __call__(self, x: Tensor, mask: Tensor, execution: Execution, *,
                 strategy: SparseStrategy = SparseStrategy.POSITIONS, tile: int = 8,
                 inplace: bool = False) -> Tensor:
        """The block's output at `mask`, its input elsewhere.

        Args:
            x: `(B, C, H, W)`.
            mask: `(B, H, W)`; bool or 0/1 (masked execution also takes soft values).
            execution: masked or compact (an `Execution` or its name).
            strategy, tile: how compact execution gathers (a `SparseStrategy` or its name).
            inplace: compact only: write into `x` when autograd is off.

        Returns:
            `(B, C, H, W)`.

        Raises:
            ConfigError: a mask of another shape, a soft mask in compact execution, an
                unknown execution or strategy, or tiles without a tile size >= 1.
        """
        return self.run_counted(x, mask, execution, strategy=strategy, tile=tile, inplace=inplace)[0]

    def run_counted(self, x: Tensor, mask: Tensor, execution: Execution, *,
                    strategy: SparseStrategy = SparseStrategy.POSITIONS, tile: int = 8,
                    inplace: bool = False) -> tuple[Tensor, Tensor]:
        """`(self(x, mask, ...), self.flops(mask, ...))`, sharing the work both need (the
        dilated position sets) instead of computing it twice."""
        check_spatial_mask(mask, x, self.name)
        execution = parse_execution(execution)
        strategy = parse_strategy(strategy, tile)
        if execution is Execution.MASKED or strategy is SparseStrategy.DENSE:
            flops = self.flops(mask, execution, strategy=strategy, tile=tile)
            if execution is Execution.MASKED:
                m = mask.unsqueeze(1).to(x.dtype)
                return x + m * (self.block(x) - x), flops
            out = self.block(x)
            # lerp with 0/1 weights returns exactly one side (as where would) and runs ~3x
            # faster than where on a channels-last map with the mask broadcast over channels
            keep = self._hard(mask).unsqueeze(1).to(out.dtype)
            if torch.is_grad_enabled():
                return torch.lerp(x, out, keep), flops
            return torch.lerp(x, out, keep, out=out), flops
        hard = self._hard(mask)
        steps = self.folded.steps()
        if strategy is SparseStrategy.TILES:
            return run_on_tiles(x, hard, steps, tile, inplace=inplace), sparse_tile_flops(hard, steps, tile)
        sets = position_sets(hard, steps)
        return run_at_positions(x, hard, steps, inplace=inplace, sets=sets), sparse_chain_flops(hard, steps, sets)

    def flops(self, mask: Tensor, execution: Execution, *,
              strategy: SparseStrategy = SparseStrategy.POSITIONS, tile: int = 8) -> Tensor:
        """Per-sample FLOPs `(B,)` float64 of `__call__` with the same arguments."""
        execution = parse_execution(execution)
        strategy = parse_strategy(strategy, tile)
        if execution is Execution.MASKED or strategy is SparseStrategy.DENSE:
            full = float(self.full_flops(*mask.shape[-2:]))
            return torch.full((mask.shape[0],), full, dtype=torch.float64, device=mask.device)
        hard = self._hard(mask)
        steps = self.folded.steps()
        if strategy is SparseStrategy.TILES:
            return sparse_tile_flops(hard, steps, tile)
        return sparse_chain_flops(hard, steps)
