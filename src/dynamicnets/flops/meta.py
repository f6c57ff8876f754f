"""Running a module on meta tensors (shapes only, no data, no compute) without changing it.

Counting FLOPs or reading shapes needs one forward pass that computes nothing. The module's
parameters and buffers are swapped, in place and for the duration of a `with` block, for
meta tensors of the same shapes and dtypes, and put back on exit, also on an error.

`torch.func.functional_call` does the same by name, but it restores a submodule that is
registered under two names (a mixture-of-experts layer that keeps its experts both on
itself and on its router/layer pair, say) from its second swap, leaving meta tensors in the
trained module. Swapping each module's own slots once, by identity, has no such case.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..execution import Execution, supported_executions


@contextmanager
def meta_tensors(module: nn.Module) -> Iterator[torch.dtype]:
    """Every parameter and buffer of `module` replaced by a meta tensor inside the block.

    Yields:
        the dtype a meta input should have (the first floating-point tensor's, else the
        default dtype).
    """
    swapped: list[tuple[dict, str, torch.Tensor]] = []
    substitutes: dict[int, torch.Tensor] = {}  # a tensor tied to two slots gets one substitute
    dtype = None
    try:
        for sub in module.modules():  # each module once, however many names it has
            for slots in (sub._parameters, sub._buffers):
                for name, tensor in list(slots.items()):
                    if tensor is None:
                        continue
                    substitute = substitutes.get(id(tensor))
                    if substitute is None:
                        substitute = torch.empty_like(tensor, device="meta")
                        if isinstance(tensor, nn.Parameter):
                            substitute = nn.Parameter(substitute, requires_grad=tensor.requires_grad)
                        substitutes[id(tensor)] = substitute
                    swapped.append((slots, name, tensor))
                    slots[name] = substitute
                    if dtype is None and tensor.is_floating_point():
                        dtype = tensor.dtype
        yield dtype or torch.get_default_dtype()
    finally:
        for slots, name, tensor in reversed(swapped):
            slots[name] = tensor


@contextmanager
def masked_dynamic_layers(module: nn.Module) -> Iterator[None]:
    """Every dynamic layer inside `module` (not `module` itself) called with
    `execution="masked"` inside the block, whatever its parent passes.

    A user's network calls the dynamic layers it holds without an execution mode, so in eval
    they would take their compact path, whose data-dependent decisions a meta forward cannot
    take; the masked path runs every block, the cost and shapes a meta forward is for.
    """
    hooks = [sub.register_forward_pre_hook(_masked_call, with_kwargs=True)
             for sub in module.modules() if sub is not module and Execution.MASKED in supported_executions(sub)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _masked_call(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return args, {**kwargs, "execution": Execution.MASKED}
