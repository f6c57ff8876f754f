"""Per-sample block costs as functions of a token-count tensor (no host syncs).

A transformer block's FLOPs are `a n + b n^2` in its token count `n` (linear layers and
the attention products). `QuadraticCost` reads `a` and `b` off a cost function once, so
that masked paths can give the cost of their decisions per sample from a `(B,)` count
tensor, on any device (meta included).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ...errors import ConfigError


class QuadraticCost:
    """`cost(n) = a n + b n^2`, fitted from `cost(1)` and `cost(2)` and checked at `n = 3, 10`.

    Args:
        cost: int -> int, per-sample FLOPs on `n` tokens, with `cost(0) == 0`.
        what: names the cost in errors.

    Raises:
        ConfigError: `cost` is not of that form (e.g. a module with a custom MLP).
    """

    def __init__(self, cost: Callable[[int], int], what: str) -> None:
        one, two = cost(1), cost(2)
        self.square = (two - 2 * one) / 2
        self.linear = one - self.square
        for n in (3, 10):
            if self.linear * n + self.square * n * n != cost(n):
                raise ConfigError(f"{what}: FLOPs are not a n + b n^2 in the token count n")

    def __call__(self, tokens: Tensor) -> Tensor:
        """`(B,)` counts -> `(B,)` float64 FLOPs."""
        n = tokens.double()
        return self.linear * n + self.square * n * n
