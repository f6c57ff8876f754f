"""The fused reference of a recurrent cell loop: `nn.LSTM` / `nn.GRU` holding an
`nn.LSTMCell` / `nn.GRUCell`'s weights.

The library's recurrent classifiers (static and dynamic) run a cell step by step. What a
user would deploy for a static sequence model is PyTorch's one-call `nn.LSTM` / `nn.GRU`;
benchmarks time it beside the cell loop, with the very same weights, to show what the
loop itself costs.
"""
from __future__ import annotations

import torch
from torch import nn

_FUSED = ((nn.LSTMCell, nn.LSTM), (nn.GRUCell, nn.GRU))


def fused_rnn(cell: nn.LSTMCell | nn.GRUCell) -> nn.LSTM | nn.GRU:
    """A one-layer, `batch_first` `nn.LSTM` (for an `nn.LSTMCell`) or `nn.GRU` (for an
    `nn.GRUCell`) with a copy of `cell`'s weights, in eval mode, on the cell's device and dtype.

    Args:
        cell: the cell whose step-by-step loop the result computes in one call.

    Returns:
        the fused module: `rnn(x (B, T, input_size))[0][:, t]` is the hidden state after
        step `t` of the cell loop from a zero state.

    Raises:
        TypeError: `cell` is not an `nn.LSTMCell` or `nn.GRUCell`.
    """
    fused = next((rnn for kind, rnn in _FUSED if isinstance(cell, kind)), None)
    if fused is None:
        raise TypeError(f"fused_rnn: expected an nn.LSTMCell or nn.GRUCell, got {type(cell).__name__}")
    weight = cell.weight_ih
    rnn = fused(cell.input_size, cell.hidden_size, bias=cell.bias, batch_first=True, device=weight.device,
                dtype=weight.dtype)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if cell.bias else ()):
            getattr(rnn, name + "_l0").copy_(getattr(cell, name))
    return rnn.eval()
