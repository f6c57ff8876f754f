"""Gradient equilibrium (Li et al., "Improved Techniques for Training Adaptive Deep
Networks", ICCV 2019; used with MSDNet).

In a multi-exit network the trunk after stage `s` feeds its own exit head and the
rest of the trunk, which leads to every later exit. Summing the exits' losses then
sums `n_s` gradients into stage `s` (`n_s` = exits at or after `s`), so early stages
receive gradients several times larger, and of higher variance, than late ones.

What is implemented here (the forward pass is unchanged, only gradients are scaled):
at the branch point after a stage that carries an exit, with `n` exits downstream
(that exit and every later exit reachable without a restart from the input),

- the gradient entering the trunk from that exit's head is multiplied by `1/n`;
- the gradient entering it from the continuing trunk is multiplied by `(n-1)/n`.

Chaining these factors, every exit's gradient reaches the output of stage `s`
multiplied by exactly `1/n_s`: the trunk of stage `s` gets the *mean* over its
downstream exits of their gradients instead of the sum. Exit heads' own parameters
get unchanged gradients. (`tests/depth/test_multi_exit.py` checks both statements.)
"""
from __future__ import annotations

import torch
from torch import Tensor

from .tree import State, tree_map


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by `factor`."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """Identity on `x` (any shape) whose backward multiplies the gradient by `factor`."""
    return _ScaleGradient.apply(x, float(factor))


def scale_state_gradient(state: State, factor: float) -> State:
    """`scale_gradient` on every tensor of a stage's activations (tensor or list)."""
    if factor == 1.0:
        return state
    return tree_map(lambda t: scale_gradient(t, factor), state)


def downstream_exit_counts(exit_after: list[int], restarts: set[int]) -> list[int]:
    """Number of exits each exit's branch point leads to (itself included).

    Args:
        exit_after: stage index each exit follows, increasing.
        restarts: indices of stages that start again from the network input (their
            trunk input carries no gradient to the earlier stages).

    Returns:
        `n_k` per exit `k`: exits `k, k+1, ...` up to the first one behind a restart.
    """
    counts = []
    for k, stage in enumerate(exit_after):
        n = 1
        for later in exit_after[k + 1 :]:
            if any(stage < r <= later for r in restarts):
                break
            n += 1
        counts.append(n)
    return counts
