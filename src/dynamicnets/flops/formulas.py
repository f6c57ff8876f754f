"""The cost formulas, in one place: per-sample FLOPs of the layers every family uses.

Convention (the same as `torch.utils.flop_counter`): 2 FLOPs per multiply-add of a
convolution or matrix product; biases, normalisation, activations and pooling are not
counted. Costs are per sample, so dynamic models can add them up per decision.
"""
from __future__ import annotations

from torch import nn


def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_flops(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int, int]:
    """Per-sample FLOPs of `conv` on a `(C_in, height, width)` input.

    Returns:
        `(flops, out_height, out_width)`.
    """
    if isinstance(conv.padding, str):
        raise ValueError("conv2d_flops needs numeric padding")
    kh, kw = conv.kernel_size
    oh = conv_out_size(height, kh, conv.stride[0], conv.padding[0], conv.dilation[0])
    ow = conv_out_size(width, kw, conv.stride[1], conv.padding[1], conv.dilation[1])
    per_position = 2 * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw
    return per_position * oh * ow, oh, ow


def conv1d_flops(conv: nn.Conv1d, length: int) -> tuple[int, int]:
    """Per-sample FLOPs of `conv` on a `(C_in, length)` input. Returns `(flops, out_length)`."""
    (k,) = conv.kernel_size
    out = conv_out_size(length, k, conv.stride[0], conv.padding[0], conv.dilation[0])
    return 2 * conv.out_channels * (conv.in_channels // conv.groups) * k * out, out


def matmul_flops(rows: int, inner: int, cols: int) -> int:
    """FLOPs of a `(rows, inner) @ (inner, cols)` product: `2 * rows * inner * cols`."""
    return 2 * rows * inner * cols


def linear_flops(linear: nn.Linear, tokens: int = 1) -> int:
    """Per-sample FLOPs of `linear` applied to `tokens` rows."""
    return matmul_flops(tokens, linear.in_features, linear.out_features)


def lstm_cell_flops(cell: nn.LSTMCell) -> int:
    """Per-sample FLOPs of one `cell` step: its input and hidden products to the 4 gates
    (what `FlopCounterMode` counts; the gate activations are free)."""
    return 2 * 4 * cell.hidden_size * (cell.input_size + cell.hidden_size)


def gru_cell_flops(cell: nn.GRUCell) -> int:
    """Per-sample FLOPs of one `cell` step: its input and hidden products to the 3 gates
    (what `FlopCounterMode` counts; the gate activations and the mixing are free)."""
    return 2 * 3 * cell.hidden_size * (cell.input_size + cell.hidden_size)


def attention_flops(heads: int, queries: int, keys: int, head_dim: int, value_dim: int | None = None) -> int:
    """Per-sample FLOPs of scaled dot-product attention: `Q K^T` and `softmax(.) V` over
    `heads` heads, `2 * heads * queries * keys * (head_dim + value_dim)` (the softmax is free).
    The formula `torch.utils.flop_counter` applies to the fused attention kernels."""
    value_dim = head_dim if value_dim is None else value_dim
    return 2 * heads * queries * keys * (head_dim + value_dim)
