"""`ExitPolicy`: which criterion decides an exit, its per-exit thresholds, a compute cap."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..gates.confidence import ExitCriterion, get_criterion


@dataclass
class ExitPolicy:
    """How a multi-exit network decides, per sample, where to stop.

    Attributes:
        criterion: `"maxprob"`, `"entropy"`, `"margin"` or `"patience"` (see
            `dynamicnets.gates.confidence`), or an `ExitCriterion` instance. A sample
            leaves at exit `k` when `criterion.should_exit(..., thresholds[k])`, i.e.
            its score at that exit is `>= thresholds[k]` (for patience: the last
            `thresholds[k]` exits agree).
        thresholds: one per exit except the last (`K - 1` numbers); the last exit takes
            every sample still running. `math.inf` closes an exit.
        max_flops: optional per-sample compute cap (a bounded worst case): a sample never
            runs past the last exit whose cumulative cost is `<= max_flops`; that exit
            takes every sample still running, whatever the criterion says.
    """

    criterion: str | ExitCriterion = "maxprob"
    thresholds: list[float] = field(default_factory=list)
    max_flops: float | None = None

    def resolve_criterion(self) -> ExitCriterion:
        """The `ExitCriterion` named by `criterion` (raises `ConfigError` for unknown names)."""
        if isinstance(self.criterion, ExitCriterion):
            return self.criterion
        return get_criterion(self.criterion)

    def check(self, num_exits: int) -> ExitCriterion:
        """Raise `ConfigError` unless there are `num_exits - 1` valid thresholds.

        Returns:
            the resolved criterion.
        """
        if len(self.thresholds) != num_exits - 1:
            raise ConfigError(
                f"key 'thresholds': the model has {num_exits} exits, so the policy needs {num_exits - 1} "
                f"thresholds (none for the last exit), got {len(self.thresholds)}: {list(self.thresholds)}"
            )
        for t in self.thresholds:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t):
                raise ConfigError(f"key 'thresholds': expected numbers, got {list(self.thresholds)}")
        criterion = self.resolve_criterion()
        if criterion.uses_history and not all(
            math.isfinite(t) and t == int(t) and t >= 1 for t in self.thresholds
        ):
            raise ConfigError(
                f"key 'thresholds': patience thresholds count agreeing exits in a row, integers >= 1 "
                f"(a value above the number of exits closes an exit), got {list(self.thresholds)}"
            )
        return criterion

    def last_exit(self, costs: Sequence[float]) -> int:
        """Index of the deepest exit a sample may reach under `max_flops`.

        Args:
            costs: cumulative per-sample cost of each exit, increasing.

        Raises:
            ConfigError: `max_flops` is below the cost of the first exit.
        """
        if self.max_flops is None:
            return len(costs) - 1
        allowed = [k for k, c in enumerate(costs) if c <= self.max_flops]
        if not allowed:
            raise ConfigError(
                f"key 'max_flops': {self.max_flops:,.0f} FLOPs is below the cheapest exit "
                f"({costs[0]:,} FLOPs per sample); attainable caps are >= {costs[0]:,}"
            )
        return allowed[-1]
