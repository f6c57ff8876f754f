"""Token decisions as maps over the patch grid, for the spatial-map pictures.

`dynamicnets.profiling.spatial_maps` (and `dynamicnets explain`) draw decisions named
`spatial_mask.{i}` (bool, where a block computed) and `ponder_map.{i}` (float, how much
computation a position received) over the input image. A token-pruning transformer's kept
patches are exactly such a mask: the tokens the blocks after a pruning stage run on.
"""
from __future__ import annotations

from torch import Tensor


def kept_token_masks(decisions: dict[str, Tensor], grid: tuple[int, int]) -> dict[str, Tensor]:
    """`spatial_mask.{s} (B, rows, cols)` bool for every `kept.{s} (B, rows * cols)` decision."""
    return {f"spatial_mask.{name.split('.', 1)[1]}": mask.reshape(mask.shape[0], *grid)
            for name, mask in decisions.items() if name.startswith("kept.")}


def halting_depth_map(halting_depth: Tensor, grid: tuple[int, int]) -> dict[str, Tensor]:
    """`ponder_map.0 (B, rows, cols)` float: the blocks each patch token ran, from A-ViT's
    `halting_depth (B, rows * cols)` (the index of the block it halted in)."""
    return {"ponder_map.0": (halting_depth + 1).float().reshape(halting_depth.shape[0], *grid)}
