"""Costs: the FLOP formulas, the one cost protocol and the counters.

- `formulas`: per-sample FLOPs of convolutions, linear layers, matrix products, LSTM steps.
- `counter`: `count_flops(model, input_shape)` for any module, `flops_and_shape` (the
  per-module walk the library's models use), `counted_flops` (what `FlopCounterMode`
  sees while a call runs; `flop_counter()` is that counter, fused CPU attention included), and the `CostReporting` protocol.

Convention (the same as `torch.utils.flop_counter`): 2 FLOPs per multiply-add of a
convolution or matrix product; biases, normalisation, activations and pooling are free.
"""
from .counter import (
    ATTENTION_FORMULAS,
    CostReporting,
    ShapeTree,
    count_flops,
    counted_flops,
    flop_counter,
    flops_and_shape,
    is_shape,
    traced_flops_and_shape,
)
from .formulas import attention_flops, conv1d_flops, conv2d_flops, conv_out_size, gru_cell_flops, linear_flops, lstm_cell_flops, matmul_flops

__all__ = [
    "ATTENTION_FORMULAS",
    "CostReporting",
    "flop_counter",
    "attention_flops",
    "ShapeTree",
    "count_flops",
    "counted_flops",
    "flops_and_shape",
    "is_shape",
    "traced_flops_and_shape",
    "conv1d_flops",
    "conv2d_flops",
    "conv_out_size",
    "linear_flops",
    "gru_cell_flops",
    "lstm_cell_flops",
    "matmul_flops",
]
