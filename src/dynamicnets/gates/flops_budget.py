"""FLOPs budget losses for spatially gated networks (DynConv's sparsity criterion).

Let `e[b, l]` be the FLOPs sample `b` executed in gated block `l` and `f[l]` the block's
dense FLOPs. With a target fraction `theta`:

- network term: `(sum_l mean_b e[b, l] / sum_l f[l] - theta)^2`, the whole network's
  executed fraction held at the budget;
- block term: each block's fraction `rho_l = mean_b e[b, l] / f[l]` kept inside bounds
  `[lower, upper]`: `mean_l (relu(rho_l - upper)^2 + relu(lower - rho_l)^2)`.

DynConv anneals the block bounds: at the start of training they are both `theta` (every
block is pushed to the budget, so none collapses to all-on or all-off early) and over the
first third of training they open, along `cos^2`, to `[0, 1]` (afterwards only the
network term binds and blocks may specialise). `block_bounds(theta, progress)` gives them
for a training progress in `[0, 1]`.
"""
from __future__ import annotations

import math

from torch import Tensor

from ..errors import ConfigError


def check_budget(theta: float, owner: str = "budget") -> float:
    """`theta` as a float after checking it lies in `(0, 1]`."""
    try:
        value = float(theta)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{owner}: the FLOPs budget (a density target) must be in (0, 1], got {theta!r}")
    return value


def block_bounds(theta: float, progress: float, anneal: float = 1 / 3) -> tuple[float, float]:
    """`(lower, upper)` bounds of each block's executed fraction at `progress` in `[0, 1]`.

    Both are `theta` at progress 0 and open to `(0, 1)` by `progress = anneal`.
    """
    p = min(max(progress / anneal, 0.0), 1.0) if anneal > 0 else 1.0
    tight = math.cos(p * math.pi / 2) ** 2
    return tight * theta, 1.0 - tight * (1.0 - theta)


def flops_budget_loss(executed: Tensor, full: Tensor, theta: float,
                      progress: float | None = None) -> Tensor:
    """DynConv's sparsity criterion (see the module docstring).

    Args:
        executed: `(B, L)` FLOPs each sample executed in each gated block (differentiable
            through the masks).
        full: `(L,)` dense FLOPs of each gated block.
        theta: budget, the target executed fraction in `(0, 1]`.
        progress: training progress in `[0, 1]` for the annealed block bounds; `None`
            leaves the block term out.

    Returns:
        A scalar.
    """
    rho = executed.mean(0) / full
    loss = (executed.mean(0).sum() / full.sum() - theta).square()
    if progress is not None:
        lower, upper = block_bounds(theta, progress)
        loss = loss + ((rho - upper).relu().square() + (lower - rho).relu().square()).mean()
    return loss
