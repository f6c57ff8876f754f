"""A per-position halting unit evaluated at chosen positions only: the compact half of
SACT's halting.

The unit is ACT's `HaltingUnit` with `spatial=True` (`models.skipping.act`):
`h(p) = sigmoid(conv_kxk(x)(p) + w . pool(x) + b)`, a one-channel convolution of the
block output plus a per-sample term from its global average. Once most positions of a
feature map have halted, only the running ones need a score. `halting_at_positions`
computes the convolution there as one matrix product over the batch's gathered `k x k`
neighbourhoods (im2col restricted to those positions, from a zero-bordered copy of the
map), and the per-sample term only for the samples that still have a running position.
The global average itself reads the whole map (a reduction, no multiply-adds): halted
positions hold the features carried over from earlier blocks, as in the masked path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...flops import linear_flops
from ...layers.conv_chain import ConvStep
from ..skipping.act import HaltingUnit


def _conv_step(unit: HaltingUnit) -> ConvStep:
    weight = unit.conv.weight
    return ConvStep(weight, weight.new_zeros(weight.shape[0]), relu=False)


def halting_at_positions(unit: HaltingUnit, x: Tensor, mask: Tensor) -> Tensor:
    """`where(mask, unit(x), 0)` computing the scores only at `mask`.

    Args:
        unit: a per-position (`spatial=True`) halting unit with a stride-1, 'same'-padded
            square convolution.
        x: `(B, C, H, W)` block output.
        mask: `(B, H, W)` bool, the positions that need a score.

    Returns:
        `(B, H, W)` scores in `(0, 1)` at `mask`, 0 elsewhere.
    """
    batch, chans, height, width = x.shape
    scores = x.new_zeros(batch, height, width)
    n, i, j = torch.nonzero(mask, as_tuple=True)
    if n.numel() == 0:
        return scores
    samples = torch.nonzero(mask.flatten(1).any(dim=1), as_tuple=True)[0]
    context = x.new_zeros(batch)
    context[samples] = unit.fc(x.mean(dim=(2, 3))[samples]).squeeze(1)
    step = _conv_step(unit)
    r = step.reach
    padded_h, padded_w = height + 2 * r, width + 2 * r
    rows = F.pad(x.permute(0, 2, 3, 1), (0, 0, r, r, r, r)).reshape(-1, chans)
    centre = (n * padded_h + i + r) * padded_w + j + r
    d = torch.arange(-r, r + 1, device=x.device)
    taps = centre.unsqueeze(1) + (d.view(-1, 1) * padded_w + d.view(1, -1)).flatten()
    local = rows[taps.flatten()].reshape(centre.numel(), -1) @ step.gemm_weight()
    scores[n, i, j] = torch.sigmoid(local.squeeze(1) + context[n])
    return scores


def halting_flops(unit: HaltingUnit, mask: Tensor) -> Tensor:
    """Per-sample FLOPs `(B,)` float64 of `halting_at_positions(unit, x, mask)`."""
    flat = mask.flatten(1)
    per_position = float(_conv_step(unit).flops_per_position())
    return (flat.sum(dim=1).to(torch.float64) * per_position
            + flat.any(dim=1).to(torch.float64) * float(linear_flops(unit.fc)))
