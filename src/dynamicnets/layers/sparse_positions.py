"""Run a residual branch at chosen positions only: gathered rows and one matrix product
per convolution, for the whole batch at once.

For a chain of convolutions `step_0 .. step_L` and a mask of output positions `M`
(`(B, H, W)` bool, the positions whose block output changes), step `L` must run at `M`,
and step `j` at `S_j = dilate(S_{j+1}, k_{j+1})`, the positions step `j + 1` reads
(a 3x3 kernel reads one position around each output, a 1x1 none). Dilation never leaves
the image: positions outside it are the zero padding of the dense convolution.

Each step's output is kept compact, one row per position of `S_j` (in a channels_last
tensor a position's channels are one contiguous row, so the block input is already such
a table). A step then is
- a 1x1 convolution: its input rows at `S_j` times the `(C_in, C_out)` weight (no
  gather at all when `S_j` is the previous step's set, as for a bottleneck's last 1x1);
- a `k x k` convolution: for each position of `S_j` the rows of its `k * k` neighbours,
  side by side as one `(|S_j|, k * k * C_in)` matrix, times the `(k * k * C_in, C_out)`
  weight (im2col restricted to the active positions). A lookup table from positions to
  rows finds the neighbours; taps outside the image read a zero row (the padding).
The last step's rows, plus the shortcut and ReLU, are written into the output at `M`;
every other position keeps its input value.

All of it is `index_select` (several times faster than advanced indexing for gathering
rows on a CPU), `index_copy_` and `addmm`: no custom kernels, any device, float32 or
float64. The FLOPs are the matrix products': `sum_j |S_j| * 2 * k_j^2 * C_in * C_out` per
sample, what `FlopCounterMode` counts on this path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv_chain import ConvStep


def dilate_mask(mask: Tensor, reach: int) -> Tensor:
    """`(B, H, W)` bool: the positions within `reach` (Chebyshev distance) of a True one."""
    if reach == 0:
        return mask
    grown = F.max_pool2d(mask.unsqueeze(1).to(torch.float32), 2 * reach + 1, 1, reach)
    return grown.squeeze(1) > 0


def position_sets(mask: Tensor, steps: list[ConvStep]) -> list[Tensor]:
    """The `(B, H, W)` bool positions where each step of the chain computes its output
    (the same tensor object for consecutive steps that share a set)."""
    sets = [mask]
    for step in reversed(steps[1:]):
        sets.append(dilate_mask(sets[-1], step.reach))
    return sets[::-1]


def sparse_chain_flops(mask: Tensor, steps: list[ConvStep], sets: list[Tensor] | None = None) -> Tensor:
    """Per-sample FLOPs `(B,)` float64 of `run_at_positions` for `mask` (`sets`: its
    `position_sets`, when already computed)."""
    total = torch.zeros(mask.shape[0], dtype=torch.float64, device=mask.device)
    for positions, step in zip(sets if sets is not None else position_sets(mask, steps), steps):
        total += positions.flatten(1).sum(1).to(torch.float64) * step.flops_per_position()
    return total


def _neighbour_offsets(kernel: int, padded_width: int, device: torch.device) -> Tensor:
    """`(k * k,)` flat offsets of a `k x k` neighbourhood (row-major) in a grid
    `padded_width` wide."""
    d = torch.arange(-(kernel // 2), kernel // 2 + 1, device=device)
    return (d.view(-1, 1) * padded_width + d.view(1, -1)).flatten()


def _taps(n: Tensor, h: Tensor, w: Tensor, reach: int, height: int, width: int) -> tuple[Tensor, Tensor | None]:
    """Flat indices `(P, k*k)` of the neighbours of positions `(n, h, w)` in a `(B, H, W)`
    map (out-of-image taps clamped to a valid index), and the `(P * k * k,)` indices of
    the out-of-image taps (`None` when there are none)."""
    d = torch.arange(-reach, reach + 1, device=n.device)
    rows = h.unsqueeze(1) + d.repeat_interleave(d.numel())   # (P, k*k), kernel row-major
    cols = w.unsqueeze(1) + d.repeat(d.numel())
    outside = (rows < 0) | (rows >= height) | (cols < 0) | (cols >= width)
    flat = (n.unsqueeze(1) * height + rows.clamp(0, height - 1)) * width + cols.clamp(0, width - 1)
    if not bool(outside.any()):
        return flat, None
    return flat, torch.nonzero(outside.flatten()).flatten()


def run_at_positions(x: Tensor, mask: Tensor, steps: list[ConvStep], *,
                     inplace: bool = False, sets: list[Tensor] | None = None) -> Tensor:
    """`where(mask, relu(x + chain(x)), x)` computing `chain` only where it is needed.

    Args:
        x: `(B, C, H, W)` block input (any memory format; channels_last avoids a copy).
        mask: `(B, H, W)` bool, the positions whose output is computed.
        steps: the residual branch (`ConvStep`s, stride 1, 'same' padding), `C -> C`.
        inplace: write the result into `x` itself (autograd must be off); saves copying
            the whole feature map. Only a channels_last `x` can be written into: any
            other `x` is left unchanged (it is copied to channels_last either way), so
            always use the returned tensor.
        sets: `position_sets(mask, steps)`, when the caller already has them.

    Returns:
        `(B, C, H, W)` channels_last (`x` itself when written in place).
    """
    batch, chans, height, width = x.shape
    x = x.contiguous(memory_format=torch.channels_last)
    out = x if inplace and not torch.is_grad_enabled() else x.clone(memory_format=torch.channels_last)
    if not bool(mask.any()):
        return out
    x_rows = x.permute(0, 2, 3, 1).reshape(-1, chans)
    pad = max(step.reach for step in steps)
    padded_w = width + 2 * pad
    offsets = {}
    # After step 0, `rows` holds the previous step's outputs plus one zero row at the end,
    # and `table` maps every position of the zero-bordered (B, H + 2 pad, W + 2 pad) grid
    # to its row: the border and the positions the step did not compute point to the zero
    # row, so a k x k gather needs no bounds checks.
    rows, table, previous = x_rows, None, None
    if sets is None:
        sets = position_sets(mask, steps)
    for j, (positions, step) in enumerate(zip(sets, steps)):
        flat = torch.nonzero(positions.flatten()).flatten()  # n * H * W + h * W + w
        line = torch.div(flat, width, rounding_mode="floor")  # n * H + h
        col = flat - line * width
        sample = torch.div(line, height, rounding_mode="floor")
        padded = (line + sample * (2 * pad) + pad) * padded_w + col + pad
        if table is None:
            if step.reach == 0:
                inputs = x_rows.index_select(0, flat)
            else:
                taps, outside = _taps(sample, line - sample * height, col, step.reach, height, width)
                inputs = x_rows.index_select(0, taps.flatten())
                if outside is not None:
                    inputs.index_fill_(0, outside, 0)
                inputs = inputs.view(flat.numel(), -1)
        elif step.reach == 0:
            inputs = rows[:-1] if positions is previous else rows.index_select(0, table.index_select(0, padded))
        else:
            k = step.kernel_size
            if k not in offsets:
                offsets[k] = _neighbour_offsets(k, padded_w, x.device)
            taps = (padded.unsqueeze(1) + offsets[k]).flatten()
            inputs = rows.index_select(0, table.index_select(0, taps)).view(flat.numel(), -1)
        if j == len(steps) - 1:
            result = torch.addmm(step.bias, inputs, step.gemm_weight())
            result = result.add_(x_rows.index_select(0, flat)).relu_()
            out.permute(0, 2, 3, 1).reshape(-1, chans).index_copy_(0, flat, result)
            return out
        count = flat.numel()
        if torch.is_grad_enabled():
            rows = torch.addmm(step.bias, inputs, step.gemm_weight())
            rows = torch.cat([rows.relu() if step.relu else rows, rows.new_zeros(1, rows.shape[1])])
        else:  # written in place after the zero row is set: no concatenation copy
            rows = inputs.new_empty(count + 1, step.weight.shape[0])
            rows[count].zero_()
            # `out=` is outside autocast's reach: under bf16 autocast the gathered rows are
            # bf16 and the folded weights float32, so the weights follow the rows' dtype
            weight, bias = step.gemm_weight(), step.bias
            if weight.dtype != inputs.dtype:
                weight, bias = weight.to(inputs.dtype), bias.to(inputs.dtype)
            torch.addmm(bias, inputs, weight, out=rows[:count])
            if step.relu:
                rows.relu_()
        table = torch.full((batch * (height + 2 * pad) * padded_w,), count, dtype=torch.long, device=x.device)
        table.index_copy_(0, padded, torch.arange(count, device=x.device))
        previous = positions
    return out
