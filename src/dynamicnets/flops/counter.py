"""Counting per-sample FLOPs of any module: its own answer, a formula, or a traced count.

`flops_and_shape(module, in_shape)` answers "how many FLOPs does one sample cost in
`module`, and what shape comes out", counted like `FlopCounterMode` (2 per
multiply-add of convolutions and matrix products; norms, activations, pooling free):

1. a module with its own `flops_and_shape(in_shape)` method answers itself (the
   library's blocks: `ConvNormAct`, `BasicBlock`, the MSDNet layers, the exit heads);
2. common layers are computed analytically (`Conv1d/2d`, `Linear`, norms, activations,
   pooling, `Flatten`, `nn.Sequential` of those);
3. anything else is *traced*: its `forward` runs once on meta tensors (no data, no
   compute, parameters and buffers substituted, so nothing of the module changes)
   under `FlopCounterMode`, which gives the exact count and the output shape.

Shapes are per sample, without the batch dim: `(C, H, W)`, or a list of such tuples
for a multi-scale state.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol, Union, runtime_checkable

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError
from ..execution import Execution, supported_executions
from ..module_modes import evaluating
from .formulas import attention_flops, conv1d_flops, conv2d_flops, linear_flops
from .meta import masked_dynamic_layers, meta_tensors

ShapeTree = Union[tuple, list]


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, queries, head_dim = query_shape
    return batch * attention_flops(heads, queries, key_shape[-2], head_dim, value_shape[-1])


def _cpu_attention_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    # backward: dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q (the forward's product count twice)
    return 2 * _cpu_attention_flops(query_shape, key_shape, value_shape)


ATTENTION_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}
"""FLOP formulas for the fused attention kernels of the CPU, which `FlopCounterMode` does not
know (it counts the CUDA kernels only, and would see zero for `scaled_dot_product_attention`
on a CPU): the same formula as PyTorch's for the CUDA kernels."""


def flop_counter(*, display: bool = False) -> FlopCounterMode:
    """A `FlopCounterMode` that also counts the CPU's fused attention (`ATTENTION_FORMULAS`).
    Every count of the library, and every test that checks a reported cost, uses it."""
    return FlopCounterMode(display=display, custom_mapping=dict(ATTENTION_FORMULAS))


@runtime_checkable
class CostReporting(Protocol):
    """The one cost protocol: a module that knows its own per-sample FLOPs.

    `flops_and_shape(in_shape)` takes the per-sample input shape (`(C, *spatial)`, or a
    list of such shapes for a multi-scale state) and returns `(flops, out_shape)`:
    the FLOPs one sample costs in the module, counted like `FlopCounterMode`, and the
    per-sample output shape. `count_flops` and `flops_and_shape` ask it first.
    """

    def flops_and_shape(self, in_shape: ShapeTree) -> tuple[int, ShapeTree]: ...


def is_shape(shape) -> bool:
    """True for one per-sample shape (a tuple of ints), False for a list of shapes."""
    return isinstance(shape, tuple) and all(isinstance(s, int) for s in shape)

_FREE_SAME_SHAPE = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Dropout,
    nn.Identity,
)


def _pool_out(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    span = size + 2 * padding - kernel
    out = (math.ceil if ceil_mode else math.floor)(span / stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return int(out)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _check_channels(module: nn.Module, expected: int, in_shape: tuple) -> None:
    if in_shape[0] != expected:
        raise ConfigError(
            f"{type(module).__name__} expects {expected} input channels, but the per-sample "
            f"input shape reaching it is {in_shape}"
        )


def flops_and_shape(module: nn.Module, in_shape: ShapeTree) -> tuple[int, ShapeTree]:
    """Per-sample FLOPs of `module` on an input of per-sample shape `in_shape`.

    Args:
        module: any module whose `forward` takes one tensor (or list of tensors).
        in_shape: `(C, *spatial)` per-sample shape, or a list of such shapes.

    Returns:
        `(flops, out_shape)`, `out_shape` per sample like `in_shape`.
    """
    if isinstance(module, CostReporting):
        flops, out = module.flops_and_shape(in_shape)
        return int(flops), out
    if isinstance(module, nn.Sequential):
        total, current = 0, in_shape
        for child in module:
            flops, current = flops_and_shape(child, current)
            total += flops
        return total, current
    if is_shape(in_shape):
        analytic = _analytic(module, in_shape)
        if analytic is not None:
            return analytic
    return traced_flops_and_shape(module, in_shape)


def _analytic(module: nn.Module, shape: tuple) -> tuple[int, tuple] | None:
    if isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple) and len(shape) == 3:
        _check_channels(module, module.in_channels, shape)
        flops, oh, ow = conv2d_flops(module, shape[1], shape[2])
        return flops, (module.out_channels, oh, ow)
    if isinstance(module, nn.Conv1d) and isinstance(module.padding, tuple) and len(shape) == 2:
        _check_channels(module, module.in_channels, shape)
        flops, ol = conv1d_flops(module, shape[1])
        return flops, (module.out_channels, ol)
    if isinstance(module, nn.Linear):
        if shape[-1] != module.in_features:
            raise ConfigError(f"Linear expects {module.in_features} input features, got per-sample shape {shape}")
        tokens = math.prod(shape[:-1])
        return linear_flops(module, tokens), shape[:-1] + (module.out_features,)
    if isinstance(module, _FREE_SAME_SHAPE):
        return 0, shape
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) and len(shape) == 3:
        if isinstance(module, nn.MaxPool2d) and _pair(module.dilation) != (1, 1):
            return None
        kh, kw = _pair(module.kernel_size)
        sh, sw = _pair(module.stride if module.stride is not None else module.kernel_size)
        ph, pw = _pair(module.padding)
        return 0, (shape[0], _pool_out(shape[1], kh, sh, ph, module.ceil_mode), _pool_out(shape[2], kw, sw, pw, module.ceil_mode))
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and len(shape) == 3:
        oh, ow = _pair(module.output_size) if module.output_size is not None else (None, None)
        return 0, (shape[0], shape[1] if oh is None else oh, shape[2] if ow is None else ow)
    if isinstance(module, nn.Flatten):
        # per-sample dims are the batched dims shifted by one
        start = module.start_dim - 1 if module.start_dim > 0 else module.start_dim + len(shape) + 1
        end = module.end_dim - 1 if module.end_dim > 0 else module.end_dim + len(shape) + 1
        if start < 0:
            return None
        return 0, shape[:start] + (math.prod(shape[start : end + 1]),) + shape[end + 1 :]
    return None


def traced_flops_and_shape(module: nn.Module, in_shape: ShapeTree) -> tuple[int, ShapeTree]:
    """Count `module` on one sample of meta tensors with `FlopCounterMode` (exact, no compute).

    Parameters and buffers are swapped for meta tensors of the same shapes for the call
    (`meta_tensors`) and put back after it, so batch-norm statistics and every other tensor
    of the module stay untouched. The module runs in eval mode; its own mode comes back.

    Returns:
        `(flops, out_shape)` for one sample.
    """
    # A dynamic model is counted on its static (masked) path, every block it can run; so is
    # every dynamic layer inside a model of the user's (`masked_dynamic_layers`).
    static = {"execution": Execution.MASKED} if supported_executions(module) else {}
    # Measured apart from any counter the caller runs: an outer FlopCounterMode must see
    # the caller's own work, not this measurement.
    # Counted in eval mode: the forward a deployed model runs, not a training forward (a
    # slimmable network's sandwich of widths, say); each module's own mode comes back after.
    with _disable_current_modes(), torch.no_grad(), evaluating(module), masked_dynamic_layers(module), \
            meta_tensors(module) as dtype, flop_counter() as counter:
        out = module(_meta_batch(in_shape, dtype), **static)
    out = getattr(out, "logits", out)  # a whole model returning DynamicOutput
    return int(counter.get_total_flops()), _per_sample_shape(out)


def _meta_batch(shape: ShapeTree, dtype: torch.dtype):
    if is_shape(shape):
        return torch.empty((1,) + shape, device="meta", dtype=dtype)
    return [_meta_batch(s, dtype) for s in shape]


def _per_sample_shape(out) -> ShapeTree:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape[1:])
    return [_per_sample_shape(o) for o in out]


def counted_flops(fn: Callable, *args, **kwargs) -> int:
    """Total FLOPs `FlopCounterMode` sees while `fn(*args, **kwargs)` runs (no grad).

    `nn.MultiheadAttention`'s fused inference path (taken in eval without grad) is an
    operator the counter does not know, so it is off for the call: the same attention runs
    as the matrix products it counts, and the count equals the meta count of `count_flops`.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), flop_counter() as counter:
            fn(*args, **kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


def count_flops(model: nn.Module, input_shape: ShapeTree) -> int:
    """Per-sample FLOPs of `model` on an input of per-sample shape `input_shape`.

    The public entry point for any module, the library's or a user's: a module that
    implements `CostReporting` answers itself; common layers and `nn.Sequential` chains
    are computed analytically; anything else is counted by `FlopCounterMode` on one
    sample of meta tensors (no data, no compute, the module's tensors untouched), in eval
    mode whatever mode the model is in (its inference cost, not a training forward's). For
    a dynamic model this is the cost of its static (masked) forward; what a given input
    executes is in `model(x).flops`.

    Args:
        model: any module whose forward takes one tensor (or a list of tensors).
        input_shape: `(C, *spatial)` without the batch dim, or a list of such shapes.

    Returns:
        FLOPs of one sample (2 per multiply-add of convolutions and matrix products).
    """
    shape = tuple(int(s) for s in input_shape) if not isinstance(input_shape, list) else input_shape
    return flops_and_shape(model, shape)[0]
