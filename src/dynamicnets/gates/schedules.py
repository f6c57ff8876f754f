"""Annealing schedules: a value that moves from `start` to `end` over `total_steps`.

Used for the Gumbel temperature `tau` and the softmax temperature of dynamic
convolutions (DY-Conv anneals it from about 30 down to 1). Each schedule is a small
immutable object, `schedule(step) -> float`; the step counter lives with the caller
(the trainer), so nothing here holds or mutates state. Before step 0 the value is
`start`; from `total_steps` on it stays at `end`. `start < end` (warm-up) works too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class _Schedule:
    start: float
    end: float
    total_steps: int

    def __post_init__(self) -> None:
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int):
            raise ConfigError(
                f"{type(self).__name__}: total_steps must be an int, got {self.total_steps!r}"
            )
        if self.total_steps <= 0:
            raise ConfigError(
                f"{type(self).__name__}: total_steps must be > 0, got {self.total_steps}"
            )

    def progress(self, step: int | float) -> float:
        """Fraction of the schedule done at `step`, clamped to `[0, 1]`."""
        return min(max(float(step) / self.total_steps, 0.0), 1.0)

    def __call__(self, step: int | float) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class LinearDecay(_Schedule):
    """`start + (end - start) * t` with `t = clamp(step / total_steps, 0, 1)`.

    Args:
        start: value at step 0.
        end: value at and after `total_steps`.
        total_steps: length of the schedule, `> 0`.
    """

    def __call__(self, step: int | float) -> float:
        t = self.progress(step)
        return self.end if t >= 1.0 else self.start + (self.end - self.start) * t


@dataclass(frozen=True)
class ExponentialDecay(_Schedule):
    """Geometric interpolation `start * (end / start) ** t`, `t = clamp(step / total_steps, 0, 1)`.

    The value shrinks by the same factor every step, the usual choice for a Gumbel
    temperature. Both `start` and `end` must be `> 0`.

    Args:
        start: value at step 0, `> 0`.
        end: value at and after `total_steps`, `> 0`.
        total_steps: length of the schedule, `> 0`.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.start > 0 and self.end > 0):
            raise ConfigError(
                f"ExponentialDecay: start and end must be > 0, got start={self.start!r}, "
                f"end={self.end!r}"
            )

    def __call__(self, step: int | float) -> float:
        t = self.progress(step)
        if t >= 1.0:
            return self.end
        return self.start * math.exp(t * math.log(self.end / self.start))


@dataclass(frozen=True)
class CosineDecay(_Schedule):
    """Half-cosine `end + (start - end) * (1 + cos(pi * t)) / 2`, `t = clamp(step / total_steps, 0, 1)`.

    Flat near both ends, steepest in the middle.

    Args:
        start: value at step 0.
        end: value at and after `total_steps`.
        total_steps: length of the schedule, `> 0`.
    """

    def __call__(self, step: int | float) -> float:
        t = self.progress(step)
        if t <= 0.0:
            return self.start
        if t >= 1.0:
            return self.end
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))
