"""Run a residual branch at chosen positions only: gathered rows and one matrix product
per convolution, for the whole batch at once.

For a chain of convolutions `step_0 .. step_L` and a mask of output positions `M`
(`(B, H, W)` bool, the positions whose block output changes), step `L` must run at `M`,
and step `j` at `S_j = dilate(S_{j+1}, k_{j+1})`, the positions step `j + 1` reads
(a 3x3 kernel reads one position around each output, a 1x1 none). Dilation never leaves
the image: positions outside it are the zero padding of the dense convolution.

Each step then is
- a 1x1 convolution: the rows of its input at `S_j` (in a channels_last tensor a
  position's channels are one contiguous row), times the `(C_in, C_out)` weight;
- a `k x k` convolution: for each position of `S_j` its `k * k` neighbours' rows, read
  from a zero-bordered buffer, side by side as one `(|S_j|, k * k * C_in)` matrix, times
  the `(k * k * C_in, C_out)` weight (im2col restricted to the active positions).
Intermediate results go to a zero-bordered `(B, H + 2r, W + 2r, C)` buffer at their
positions, which the next step gathers from. The last step's rows, plus the shortcut and
ReLU, are written into the output at `M`; every other position keeps its input value.

All of it is advanced indexing and `addmm`: no custom kernels, any device, float32 or
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
    """The `(B, H, W)` bool positions where each step of the chain computes its output."""
    sets = [mask]
    for step in reversed(steps[1:]):
        sets.append(dilate_mask(sets[-1], step.reach))
    return sets[::-1]


def sparse_chain_flops(mask: Tensor, steps: list[ConvStep]) -> Tensor:
    """Per-sample FLOPs `(B,)` float64 of `run_at_positions` for `mask`."""
    total = torch.zeros(mask.shape[0], dtype=torch.float64, device=mask.device)
    for positions, step in zip(position_sets(mask, steps), steps):
        total += positions.flatten(1).sum(1).to(torch.float64) * step.flops_per_position()
    return total


def _neighbour_offsets(kernel: int, padded_width: int, device: torch.device) -> Tensor:
    r = kernel // 2
    d = torch.arange(-r, r + 1, device=device)
    return (d.view(-1, 1) * padded_width + d.view(1, -1)).flatten()


def run_at_positions(x: Tensor, mask: Tensor, steps: list[ConvStep], *,
                     inplace: bool = False) -> Tensor:
    """`where(mask, relu(x + chain(x)), x)` computing `chain` only where it is needed.

    Args:
        x: `(B, C, H, W)` block input (any memory format; channels_last avoids a copy).
        mask: `(B, H, W)` bool, the positions whose output is computed.
        steps: the residual branch (`ConvStep`s, stride 1, 'same' padding), `C -> C`.
        inplace: write the result into `x` itself (autograd must be off); saves copying
            the whole feature map.

    Returns:
        `(B, C, H, W)` channels_last.
    """
    batch, chans, height, width = x.shape
    x = x.contiguous(memory_format=torch.channels_last)
    out = x if inplace and not torch.is_grad_enabled() else x.clone(memory_format=torch.channels_last)
    if not bool(mask.any()):
        return out
    pad = max(step.reach for step in steps)
    padded_h, padded_w = height + 2 * pad, width + 2 * pad
    x_rows = x.permute(0, 2, 3, 1).reshape(-1, chans)
    x_padded_rows = None
    source_rows = x_rows  # rows of the previous step's output, unpadded for x, else padded
    source_padded = False
    sets = position_sets(mask, steps)
    for j, (positions, step) in enumerate(zip(sets, steps)):
        n, h, w = torch.nonzero(positions, as_tuple=True)
        plain = (n * height + h) * width + w
        padded = (n * padded_h + h + pad) * padded_w + w + pad
        if step.reach == 0:
            rows = source_rows[padded if source_padded else plain]
        else:
            if not source_padded:
                if x_padded_rows is None:
                    x_padded_rows = F.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad)).reshape(-1, chans)
                source_rows, source_padded = x_padded_rows, True
            taps = padded.unsqueeze(1) + _neighbour_offsets(step.kernel_size, padded_w, x.device)
            rows = source_rows[taps.flatten()].reshape(padded.numel(), -1)
        result = torch.addmm(step.bias, rows, step.gemm_weight())
        if j == len(steps) - 1:
            result = result.add_(x_rows[plain]).relu_()
            out_rows = out.permute(0, 2, 3, 1).reshape(-1, chans)
            out_rows.index_copy_(0, plain, result)
            return out
        if step.relu:
            result = result.relu_()
        buffer = result.new_zeros(batch * padded_h * padded_w, result.shape[1])
        buffer.index_copy_(0, padded, result)
        source_rows, source_padded = buffer, True
    return out
