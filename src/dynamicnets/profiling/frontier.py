"""Is a dynamic model better than the static models at the same cost? An honest verdict.

The static models trace a frontier of accuracy against cost (FLOPs, or measured time per
sample). The dynamic model's point `(cost, accuracy)` is compared with that frontier at
its own cost:

- the frontier's accuracy at cost `c` is the best static accuracy among models that cost
  at most `c`, raised by linear interpolation towards the next dearer frontier model (a
  static family can be assumed to trade smoothly between two of its sizes; beyond the
  dearest model the frontier stays flat);
- below the cheapest static model there is no static model of that cost: the dynamic
  point then wins only if it is at least as accurate as that cheapest model.

A margin smaller than the sampling noise of the accuracies is not a win. When every
point carries its per-sample correctness on the same evaluation samples, the noise is
the paired standard error: `d_i = correct_dyn_i - ((1 - w) correct_lo_i + w correct_hi_i)`
(the two frontier models the cost falls between, `w` the interpolation weight) and
`se = std(d) / sqrt(n)`; otherwise, given the sample count `n`, the unpaired
`sqrt(2 p (1 - p) / n)`. `compare_to_frontier` calls a point a win only when its margin
exceeds `noise_se` standard errors (2 by default) where a static model of the same cost
exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True)
class FrontierPoint:
    """One evaluated model: `cost` (FLOPs or ms per sample, > 0), `accuracy` in [0, 1],
    and optionally `correct`, its `(N,)` per-sample 0/1 correctness on the evaluation
    samples (the same samples, in the same order, for every point), for paired noise."""

    name: str
    cost: float
    accuracy: float
    correct: Tensor | None = None


@dataclass(frozen=True)
class FrontierComparison:
    """A dynamic point against the static frontier at its cost.

    Attributes:
        point: the dynamic point.
        static_accuracy: the frontier's accuracy at `point.cost`; `None` below the
            cheapest static model.
        margin: `point.accuracy - static_accuracy` (against the cheapest static model's
            accuracy when `static_accuracy` is `None`), in accuracy units.
        noise: the standard error of that difference (0 when the sample count is unknown).
        wins: the margin is larger than `noise_se` standard errors; below the cheapest
            static model (cheaper than every static model), the margin is >= 0.
    """

    point: FrontierPoint
    static_accuracy: float | None
    margin: float
    noise: float
    wins: bool


def _check(points: Sequence[FrontierPoint], what: str) -> None:
    if not points:
        raise ConfigError(f"compare_to_frontier: {what} must hold at least one point")
    for p in points:
        if not (p.cost > 0 and math.isfinite(p.cost)):
            raise ConfigError(f"compare_to_frontier: {what} point {p.name!r} has cost {p.cost!r}; expected > 0")
        if not 0.0 <= p.accuracy <= 1.0:
            raise ConfigError(f"compare_to_frontier: {what} point {p.name!r} has accuracy {p.accuracy!r}; "
                              "expected a fraction in [0, 1]")


def frontier(static: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    """The static points no other static point beats (cheaper or equal cost, higher
    accuracy), sorted by cost: each is more accurate than every cheaper one."""
    _check(static, "static")
    best: list[FrontierPoint] = []
    for p in sorted(static, key=lambda p: (p.cost, -p.accuracy)):
        if not best or p.accuracy > best[-1].accuracy:
            best.append(p)
    return best


def _bracket(line: list[FrontierPoint], cost: float) -> tuple[FrontierPoint, FrontierPoint, float] | None:
    """`(lo, hi, w)`: the frontier at `cost` is `(1 - w) lo + w hi`; `None` below it."""
    if cost < line[0].cost:
        return None
    for lo, hi in zip(line, line[1:]):
        if lo.cost <= cost < hi.cost:
            return lo, hi, (cost - lo.cost) / (hi.cost - lo.cost)
    return line[-1], line[-1], 0.0


def static_accuracy_at(static: Sequence[FrontierPoint], cost: float) -> float | None:
    """The frontier's accuracy at `cost` (see the module docstring); `None` below the
    cheapest static model."""
    found = _bracket(frontier(static), cost)
    if found is None:
        return None
    lo, hi, w = found
    return (1 - w) * lo.accuracy + w * hi.accuracy


def _paired_noise(point: FrontierPoint, lo: FrontierPoint, hi: FrontierPoint, w: float) -> float | None:
    vectors = [point.correct, lo.correct, hi.correct]
    if any(v is None for v in vectors) or len({v.numel() for v in vectors}) != 1 or vectors[0].numel() < 2:
        return None
    dyn, low, high = (v.detach().double().flatten() for v in vectors)
    diff = dyn - ((1 - w) * low + w * high)
    return float(diff.std() / math.sqrt(diff.numel()))


def compare_to_frontier(static: Sequence[FrontierPoint], dynamic: Sequence[FrontierPoint], *,
                        samples: int | None = None, noise_se: float = 2.0) -> list[FrontierComparison]:
    """Compare every dynamic point with the static frontier at its cost.

    Args:
        static: the static models (at least one).
        dynamic: the dynamic model's operating points (e.g. one per calibrated budget).
        samples: how many samples each accuracy was measured on, for the unpaired noise
            when the points carry no `correct` vectors; `None` (and no vectors): no noise.
        noise_se: how many standard errors the margin must exceed to count as a win.

    Returns:
        one `FrontierComparison` per dynamic point, in order.
    """
    _check(dynamic, "dynamic")
    if samples is not None and samples < 1:
        raise ConfigError(f"compare_to_frontier: samples must be >= 1, got {samples}")
    line = frontier(static)
    result = []
    for p in dynamic:
        found = _bracket(line, p.cost)
        lo, hi, w = (line[0], line[0], 0.0) if found is None else found
        reference = None if found is None else (1 - w) * lo.accuracy + w * hi.accuracy
        against = (1 - w) * lo.accuracy + w * hi.accuracy
        margin = p.accuracy - against
        mean = (p.accuracy + against) / 2
        noise = _paired_noise(p, lo, hi, w)
        if noise is None:
            noise = 0.0 if samples is None else math.sqrt(2 * mean * (1 - mean) / samples)
        wins = margin > noise_se * noise if reference is not None else margin >= 0
        result.append(FrontierComparison(p, reference, margin, noise, wins))
    return result


def verdict(comparisons: Sequence[FrontierComparison], *, model: str, cost_name: str,
            format_cost=lambda c: f"{c:.3g}") -> str:
    """One sentence: where the dynamic model beats the static frontier at equal cost, or
    that it does nowhere (then the closest it comes)."""
    wins = [c for c in comparisons if c.wins]
    if wins:
        best = max(wins, key=lambda c: c.margin)
        return (f"{model} beats every static model at equal {cost_name} at {len(wins)} of {len(comparisons)} "
                f"operating points; the largest margin is {100 * best.margin:+.2f} points "
                f"(noise {100 * best.noise:.2f}) at {format_cost(best.point.cost)}.")
    best = max(comparisons, key=lambda c: c.margin)
    return (f"no honest win: at no operating point is {model} more accurate than the static models at equal "
            f"{cost_name} (beyond the noise); its closest is {100 * best.margin:+.2f} points "
            f"(noise {100 * best.noise:.2f}) at {format_cost(best.point.cost)}.")
