"""Run a residual branch on active tiles only: gather tiles with their halo into a batch
of small patches, run dense convolutions on them, write the interiors back (SBNet's
block-sparse scheme, Ren et al. 2018, here for any batch on any device).

The feature map is cut into `t x t` tiles (the grid is `ceil(H / t) x ceil(W / t)`; when
`t` does not divide the map the last row and column of tiles hang over the edge, and what
hangs over is zero input whose outputs are discarded). A tile runs when any of its
positions is in the mask. A chain whose steps read `r_j = k_j // 2` positions around
their outputs needs a halo of `R = sum_j r_j` around each tile: the patch is
`(t + 2R) x (t + 2R)` and each step is an unpadded ('valid') convolution that shrinks it
by `2 r_j`, down to the `t x t` interior. Halo positions outside the image are zeroed
after every intermediate step, which is what zero padding does in the dense network, so
the interiors equal the dense block's outputs. Only the masked positions of a tile are
written back; the others keep their input.

Cost per active tile: `sum_j (t + 2 R_j)^2 * 2 * k_j^2 * C_in * C_out` with `R_j` the halo
left after step `j`, i.e. the halo is paid for (a 1x1 step on a 10x10 patch around an 8x8
tile costs 100/64 of its interior). In exchange each step is one ordinary convolution over
many patches, the fastest primitive a CPU or GPU library has.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv_chain import ConvStep


def tile_grid(height: int, width: int, tile: int) -> tuple[int, int]:
    """`(rows, cols)` of the tile grid: `ceil(H / tile), ceil(W / tile)`."""
    return -(-height // tile), -(-width // tile)


def tile_any(mask: Tensor, tile: int) -> Tensor:
    """`(B, H, W)` bool positions -> `(B, gh, gw)` bool: the tiles holding any of them."""
    height, width = mask.shape[-2:]
    rows, cols = tile_grid(height, width, tile)
    padded = F.pad(mask.to(torch.float32), (0, cols * tile - width, 0, rows * tile - height))
    return F.max_pool2d(padded.unsqueeze(1), tile).squeeze(1) > 0


def _halos(steps: list[ConvStep]) -> list[int]:
    """Halo left after each step: `R_j = sum_{i > j} r_i`; `R_{-1}` (the input's) first."""
    left = [sum(s.reach for s in steps)]
    for step in steps:
        left.append(left[-1] - step.reach)
    return left


def sparse_tile_flops(mask: Tensor, steps: list[ConvStep], tile: int) -> Tensor:
    """Per-sample FLOPs `(B,)` float64 of `run_on_tiles` for `mask`."""
    per_tile = sum((tile + 2 * halo) ** 2 * step.flops_per_position()
                   for halo, step in zip(_halos(steps)[1:], steps))
    return tile_any(mask, tile).flatten(1).sum(1).to(torch.float64) * per_tile


@dataclass(frozen=True)
class _Tiles:
    sample: Tensor  # (T,) batch index of each active tile
    rows: Tensor    # (T, t + 2R) padded-map rows of each patch
    cols: Tensor    # (T, t + 2R) padded-map columns


def _active_tiles(mask: Tensor, tile: int, halo: int) -> _Tiles:
    n, i, j = torch.nonzero(tile_any(mask, tile), as_tuple=True)
    span = torch.arange(tile + 2 * halo, device=mask.device)
    return _Tiles(n, (i * tile).unsqueeze(1) + span, (j * tile).unsqueeze(1) + span)


def run_on_tiles(x: Tensor, mask: Tensor, steps: list[ConvStep], tile: int, *,
                 inplace: bool = False) -> Tensor:
    """`where(mask, relu(x + chain(x)), x)` computing `chain` on the tiles `mask` touches.

    Args:
        x: `(B, C, H, W)` block input (channels_last avoids a copy).
        mask: `(B, H, W)` bool positions whose output is computed.
        steps: the residual branch (`ConvStep`s, stride 1, 'same' padding), `C -> C`.
        tile: tile side `t >= 1`.
        inplace: write into `x` (autograd must be off). Only a channels_last `x` can be
            written into: any other `x` is left unchanged, so always use the returned tensor.

    Returns:
        `(B, C, H, W)` channels_last (`x` itself when written in place).
    """
    batch, chans, height, width = x.shape
    x = x.contiguous(memory_format=torch.channels_last)
    out = x if inplace and not torch.is_grad_enabled() else x.clone(memory_format=torch.channels_last)
    halos = _halos(steps)
    halo = halos[0]
    tiles = _active_tiles(mask, tile, halo)
    if tiles.sample.numel() == 0:
        return out
    grid_h, grid_w = tile_grid(height, width, tile)
    extra_h, extra_w = grid_h * tile - height, grid_w * tile - width
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, halo, halo + extra_w, halo, halo + extra_h))
    padded_h, padded_w = padded.shape[1:3]
    n = tiles.sample.view(-1, 1, 1)
    span = tiles.rows.shape[1]
    pixels = (n * padded_h + tiles.rows.unsqueeze(2)) * padded_w + tiles.cols.unsqueeze(1)
    patches = padded.reshape(-1, chans).index_select(0, pixels.flatten())
    patches = patches.view(-1, span, span, chans).permute(0, 3, 1, 2)
    inside_rows = (tiles.rows >= halo) & (tiles.rows < halo + height)
    inside_cols = (tiles.cols >= halo) & (tiles.cols < halo + width)
    h = patches
    for j, step in enumerate(steps):
        h = F.conv2d(h, step.weight, step.bias)
        last = j == len(steps) - 1
        if step.relu and not last:
            h = h.relu_()
        if not last:
            cut = halo - halos[j + 1]  # positions trimmed from each side so far
            keep = slice(cut, cut + h.shape[-1])
            inside = inside_rows[:, keep].unsqueeze(2) & inside_cols[:, keep].unsqueeze(1)
            h = h * inside.unsqueeze(1).to(h.dtype)
    interior = slice(halo, halo + tile)
    result = h.add_(patches[:, :, interior, interior]).relu_().permute(0, 2, 3, 1)
    out_rows = out.permute(0, 2, 3, 1).reshape(-1, chans)
    r = tiles.rows[:, interior] - halo
    c = tiles.cols[:, interior] - halo
    flat = ((n * height + r.unsqueeze(2)) * width + c.unsqueeze(1))
    write = (r.unsqueeze(2) < height) & (c.unsqueeze(1) < width)
    write = write & mask[n, r.unsqueeze(2).clamp_max(height - 1), c.unsqueeze(1).clamp_max(width - 1)]
    if bool(write.all()):
        out_rows.index_copy_(0, flat.flatten(), result.reshape(-1, chans))
    else:
        out_rows.index_copy_(0, flat[write], result[write])
    return out
