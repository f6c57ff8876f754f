"""Spatial gates: where in the feature map a residual block runs.

`SpatialMaskGate` is DynConv's mask unit (Verelst & Tuytelaars, "Dynamic Convolutions:
Exploiting Spatial Sparsity for Faster Inference", CVPR 2020): a small convolution on the
block input scores each position; with `tile > 1` the input is first average-pooled over
`tile x tile` tiles and the gate scores tiles (SBNet-style granularity: one decision per
tile, which the tile strategy of sparse execution can run without waste).

The gate only scores. `spatial_decisions` turns scores into masks: a straight-through
Gumbel-sigmoid sample while training (exact 0/1 forward, relaxed gradient), and
`logit > threshold` at inference, where the threshold is a policy (`GatePolicy`, one per
gated block) rather than part of the layer. `expand_tiles` turns tile decisions into the
`(B, H, W)` position mask that layers take. `cap_density` bounds the fraction of
decision cells a sample may run (a `GatePolicy`'s `max_density`): a bounded worst case
for inputs that switch every position on.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import conv_out_size
from .gumbel import sample_logistic


class SpatialMaskGate(nn.Module):
    """Per-position (or per-tile) gate logits from a block input.

    Args:
        in_chans: channels of the block input.
        tile: decision granularity; 1 scores every position, `t > 1` every `t x t` tile
            (the input is average-pooled first; a partial last tile is pooled over the
            positions it has).
        kernel_size: odd size of the scoring convolution (1 in DynConv).
        bias_init: initial bias of the logits (a positive bias starts with most positions
            executed, so a gate added to a trained network starts close to it).

    Shapes:
        `(B, in_chans, H, W) -> (B, ceil(H / tile), ceil(W / tile))` logits.
    """

    def __init__(self, in_chans: int, tile: int = 1, kernel_size: int = 1, *,
                 bias_init: float = 3.0, device=None, dtype=None) -> None:
        super().__init__()
        if not (isinstance(tile, int) and not isinstance(tile, bool) and tile >= 1):
            raise ConfigError(f"SpatialMaskGate: tile must be an int >= 1, got {tile!r}")
        if not (isinstance(kernel_size, int) and not isinstance(kernel_size, bool) and kernel_size >= 1
                and kernel_size % 2 == 1):
            raise ConfigError(f"SpatialMaskGate: kernel_size must be an odd int >= 1, got {kernel_size!r}")
        self.tile = tile
        self.conv = nn.Conv2d(in_chans, 1, kernel_size, padding=kernel_size // 2,
                              device=device, dtype=dtype)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.constant_(self.conv.bias, bias_init)

    def forward(self, x: Tensor) -> Tensor:
        if self.tile > 1:
            x = F.avg_pool2d(x, self.tile, ceil_mode=True)
        return self.conv(x).squeeze(1)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The decision grid for an `H x W` input."""
        return -(-height // self.tile), -(-width // self.tile)

    def flops(self, height: int, width: int) -> int:
        """Per-sample FLOPs on an `H x W` input (pooling is free, as in `FlopCounterMode`)."""
        rows, cols = self.grid(height, width)
        k = self.conv.kernel_size[0]
        oh = conv_out_size(rows, k, 1, k // 2)
        ow = conv_out_size(cols, k, 1, k // 2)
        return 2 * self.conv.in_channels * k * k * oh * ow


def spatial_decisions(logits: Tensor, *, training: bool, threshold: float = 0.0,
                      tau: float = 1.0, noise_scale: float = 1.0,
                      generator: torch.Generator | None = None) -> Tensor:
    """Hard spatial decisions from gate logits.

    Args:
        logits: `(B, h, w)` gate logits.
        training: sample straight-through Gumbel-sigmoid decisions (float 0/1 with the
            relaxed gradient); otherwise threshold deterministically.
        threshold: inference rule `logit > threshold` (0 is the trained default,
            `sigmoid(logit) > 0.5`).
        tau: Gumbel temperature in training (it shapes the gradient only: the hard
            decision `logit + noise > 0` does not depend on it).
        noise_scale: multiplies the logistic noise in training. 1 is the Gumbel-sigmoid
            sample (DynConv); annealing it toward 0 makes the training decisions converge
            to the inference rule `logit > 0`, which closes the gap between a network
            trained on noisy masks and evaluated on thresholded ones.
        generator: optional `torch.Generator` for the training noise.

    Returns:
        `(B, h, w)`: float in training (differentiable), bool at inference.
    """
    if not training:
        return logits > threshold
    if not tau > 0:
        raise ConfigError(f"spatial_decisions: tau must be > 0, got {tau!r}")
    scores = logits + noise_scale * sample_logistic(logits, generator) if noise_scale > 0 else logits
    soft = torch.sigmoid(scores / tau).to(logits.dtype)
    hard = (scores > 0).to(soft.dtype)
    return hard + (soft - soft.detach())  # value exactly `hard`, gradient the relaxed sample's


_FLOOR_SLACK = 1e-9  # so that e.g. 0.29 * 100 cells allows 29, not 28


def density_limit(max_density: float, cells: int) -> int:
    """The most of `cells` decision cells a sample runs under `max_density`:
    `floor(max_density * cells)`."""
    return min(cells, math.floor(max_density * cells + _FLOOR_SLACK))


def cap_density(scores: Tensor, decided: Tensor, max_density: float | None) -> Tensor:
    """Keep at most `density_limit(max_density, h * w)` of each sample's active cells: where
    a sample has more, its highest-scoring ones.

    Args:
        scores: `(B, h, w)` per-cell scores (gate logits: the more confident, the higher).
        decided: `(B, h, w)` bool decisions.
        max_density: the cap in `(0, 1]`, or None (no cap: `decided` itself).

    Returns:
        `(B, h, w)` bool, a subset of `decided`. No host sync.
    """
    if max_density is None:
        return decided
    batch, cells = decided.shape[0], decided[0].numel()
    keep = density_limit(max_density, cells)
    if keep >= cells:
        return decided
    flat = decided.reshape(batch, cells)
    if keep == 0:
        return torch.zeros_like(decided)
    ranked = scores.reshape(batch, cells).masked_fill(~flat, -math.inf)
    top = ranked.topk(keep, dim=1).indices
    chosen = torch.zeros_like(flat).scatter_(1, top, True)
    return (chosen & flat).view_as(decided)


def expand_tiles(decisions: Tensor, tile: int, height: int, width: int) -> Tensor:
    """`(B, h, w)` tile decisions -> `(B, H, W)` position mask (each tile's value
    repeated over its `tile x tile` positions, cropped to `H x W`)."""
    if tile == 1:
        return decisions
    grown = decisions.repeat_interleave(tile, dim=1).repeat_interleave(tile, dim=2)
    return grown[:, :height, :width]
