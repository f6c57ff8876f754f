"""Activations between stages: one tensor, or a list/tuple of tensors (multi-scale).

A stage of a multi-exit network may hand the next stage a single `(B, ...)` tensor or
a list of them (MSDNet passes one feature map per scale). These helpers apply one
operation to every tensor of such a "state" so the executor and the gradient scaling
need not know which kind they hold.
"""
from __future__ import annotations

from typing import Callable, Union

from torch import Tensor

State = Union[Tensor, list, tuple]
ShapeTree = Union[tuple, list]


def tree_map(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply `fn` to every tensor of `state`, keeping the list/tuple structure."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (list, tuple)):
        return type(state)(tree_map(fn, s) for s in state)
    raise TypeError(f"stage activations must be a Tensor or a list/tuple of them, got {type(state).__name__}")


def select_batch(state: State, index: Tensor) -> State:
    """Rows `index` (int64 `(n,)`) of every tensor of `state` along the batch dim 0.

    Advanced indexing rather than `index_select`: it keeps a `channels_last` layout
    (`index_select` returns a contiguous tensor, and every later conv would pay a
    layout conversion).
    """
    return tree_map(lambda t: t[index], state)


def is_shape(shape) -> bool:
    """True for one per-sample shape (a tuple of ints), False for a list of shapes."""
    return isinstance(shape, tuple) and all(isinstance(s, int) for s in shape)
