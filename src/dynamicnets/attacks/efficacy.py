"""Early-exit efficacy: how much computation a multi-exit network's early exits save.

Defined as in DeepSloth (Hong, Kaya, Modoranu, Lin, Dumitras, "A Panda? No, It's a Sloth:
Slowdown Attacks on Adaptive Multi-Exit Neural Network Inference", ICLR 2021): the *early-exit capability* (EEC) curve plots, against the
fraction of the full network's computation spent, the fraction of the samples that
have left by then; the *efficacy* is the area under that curve.

Exactly: exit `k` (of `K`, shallowest first) costs the cumulative `C_k` per sample, and
the curve joins, by straight lines (the trapezoid rule, as the authors compute it), the
points

    (0, 0), (C_0 / C_{K-1}, F_0), ..., (C_{K-2} / C_{K-1}, F_{K-2}), (1, 1),

where `F_k` is the fraction of samples that left at exit `k` or earlier; every sample has
left at the last exit, at the full cost. Hence efficacy lies between

- `(1 - C_{K-2} / C_{K-1}) / 2` when every sample runs to the last exit (the
  non-adaptive network; not 0: the straight line from the last internal exit to the
  final one keeps a triangle, small when that exit sits near the end), and
- `1 - C_0 / (2 C_{K-1})` when every sample leaves at the first exit.

A compute cap (`ExitPolicy.max_flops`) that forces samples out at an earlier exit counts
them at that exit, so it raises the efficacy of an attacked input set.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError


def _check_costs(exit_costs: Sequence[float]) -> list[float]:
    costs = [float(c) for c in exit_costs]
    if len(costs) < 1 or costs[0] <= 0 or any(b < a for a, b in zip(costs, costs[1:])):
        raise ConfigError(f"exit_costs: expected cumulative per-sample costs > 0, non-decreasing, got {costs}")
    return costs


def exit_indices_from_flops(flops: Tensor, exit_costs: Sequence[float]) -> Tensor:
    """`(N,)` exit index of each per-sample cost, the exit whose cost it equals.

    Args:
        flops: `(N,)` per-sample FLOPs as the early-exit executor reports them.
        exit_costs: the cost of leaving at each exit (`model.exit_costs(input_shape)`;
            for a criterion whose decisions cost FLOPs, the executor's
            `costs_with_decisions`).

    Raises:
        ConfigError: naming `flops`, when a value matches no exit's cost.
    """
    costs = torch.tensor(_check_costs(exit_costs), dtype=torch.float64)
    values = flops.detach().to(torch.float64).cpu().reshape(-1, 1)
    close = torch.isclose(values, costs.view(1, -1), rtol=1e-9, atol=0.5)
    if not bool(close.any(dim=1).all()):
        bad = values[~close.any(dim=1)].view(-1)[:3].tolist()
        raise ConfigError(f"flops: per-sample costs {bad} match none of the exit costs {costs.tolist()}")
    return close.to(torch.int64).argmax(dim=1)


def early_exit_curve(exit_costs: Sequence[float], exit_index: Tensor) -> tuple[list[float], list[float]]:
    """The EEC curve's points: `(cost fractions, fractions of samples that have left)`.

    Args:
        exit_costs: `K` cumulative per-sample costs, non-decreasing.
        exit_index: `(N,)` int exit each sample took, in `[0, K)`.

    Returns:
        two lists of `K + 1` floats, starting at `(0, 0)` and ending at `(1, 1)`.

    Raises:
        ConfigError: naming `exit_costs` or `exit_index`.
    """
    costs = _check_costs(exit_costs)
    index = exit_index.detach().reshape(-1).cpu()
    if index.numel() == 0 or index.is_floating_point() or int(index.min()) < 0 or int(index.max()) >= len(costs):
        raise ConfigError(f"exit_index: expected a non-empty integer tensor of exits in [0, {len(costs)}), "
                          f"got {index[:8].tolist()}{'...' if index.numel() > 8 else ''}")
    counts = torch.bincount(index.to(torch.int64), minlength=len(costs)).to(torch.float64)
    left = (counts.cumsum(0) / index.numel()).tolist()
    fractions = [0.0] + [c / costs[-1] for c in costs]
    return fractions, [0.0] + left[:-1] + [1.0]


def efficacy(exit_costs: Sequence[float], *, exit_index: Tensor | None = None, flops: Tensor | None = None) -> float:
    """Area under the early-exit capability curve (see the module docstring).

    Args:
        exit_costs: `K` cumulative per-sample costs of leaving at each exit.
        exit_index: `(N,)` exit each sample took, or
        flops: `(N,)` per-sample FLOPs, each equal to one of `exit_costs`.

    Returns:
        a float in `[0, 1]`: higher means more computation saved.

    Raises:
        ConfigError: not exactly one of `exit_index` and `flops`, or bad values.
    """
    if (exit_index is None) == (flops is None):
        raise ConfigError("efficacy: give exactly one of exit_index and flops")
    if exit_index is None:
        exit_index = exit_indices_from_flops(flops, exit_costs)
    x, y = early_exit_curve(exit_costs, exit_index)
    return float(sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(x, x[1:], y, y[1:])))
