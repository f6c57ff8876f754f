"""Stage activations of a multi-exit network: one tensor or a list of them (multi-scale).

A stage may hand the next one a single `(B, ...)` tensor or a list of them (MSDNet passes
one feature map per scale). The tensors are handled by `dynamicnets.compact`, their
per-sample shapes by `dynamicnets.flops`.
"""
from ...compact import State, tree_map
from ...flops import ShapeTree, is_shape

__all__ = ["ShapeTree", "State", "is_shape", "tree_map"]
