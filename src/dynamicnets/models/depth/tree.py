"""Per-sample shapes of stage activations: one tuple, or a list of them (multi-scale).

A stage of a multi-exit network may hand the next stage a single `(B, ...)` tensor or a
list of them (MSDNet passes one feature map per scale); its per-sample shape is then a
tuple or a list of tuples. The tensors themselves are handled by `dynamicnets.compact`.
"""
from __future__ import annotations

from typing import Union

from ...compact import State, tree_map

ShapeTree = Union[tuple, list]

__all__ = ["ShapeTree", "State", "is_shape", "tree_map"]


def is_shape(shape) -> bool:
    """True for one per-sample shape (a tuple of ints), False for a list of shapes."""
    return isinstance(shape, tuple) and all(isinstance(s, int) for s in shape)
