"""`BlockBudget`: a per-sample compute cap on gated blocks (a bounded worst case).

A layer-skipping model's gates may switch every block on (an input crafted for it, as in
the DeepSloth slowdown attack, does). A `GatePolicy` with `max_flops` and/or `max_blocks`
bounds what any sample can cost, whatever its gates say. The rule, greedy in the order
the blocks run:

    a gated block that a sample's gate turns on runs only if the sample's FLOPs so far
    (everything that always runs, the gate networks, the gated blocks it already ran)
    plus the block's stay `<= max_flops`, and it has run fewer than `max_blocks` gated
    blocks; otherwise that gate is forced off for that sample.

A block forced off does not close the later ones: each is judged against what is left
(with equal block costs, as in a CIFAR ResNet, the first refusal ends the sample's gated
blocks anyway). Skipped blocks cost nothing, so a sample never exceeds the cap, and
`max_flops` must be at least the cost with every gated block skipped.

The budget only turns gates off: a decision the cap leaves alone is the gate's own, so a
policy without a cap changes nothing.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from .thresholds import GatePolicy

CAPS = ("max_flops", "max_blocks")  # the caps of a GatePolicy a budget honours


class BlockBudget:
    """What each sample of a batch may still spend on gated blocks (module docstring).

    Args:
        costs: `(G,)` per-sample FLOPs of each gated block, in gate index order.
        base: per-sample FLOPs every sample pays whatever its gates (always-run layers
            and the gate networks evaluated).
        max_flops: the per-sample cap, or None.
        max_blocks: the most gated blocks a sample runs, or None.
        owner: names the model in errors.

    Raises:
        ConfigError: `max_flops < base` (the cap is below the cheapest execution).

    Use one budget per forward: `admit(index, on)` once per gated block (tensor
    decisions), or `admit_one(index, on)` for a batch of one with Python bools; then
    `forced_off(...)` gives the gates the cap turned off.
    """

    def __init__(self, costs: Sequence[float] | Tensor, base: float, *, max_flops: float | None = None,
                 max_blocks: int | None = None, owner: str = "model") -> None:
        self.costs = [float(c) for c in (costs.tolist() if isinstance(costs, Tensor) else costs)]
        self.base = float(base)
        if max_flops is not None and max_flops < self.base:
            raise ConfigError(
                f"{owner}: key 'max_flops': {max_flops:,.0f} FLOPs per sample is below the cheapest execution "
                f"(every gated block skipped: {self.base:,.0f} FLOPs); attainable caps are >= {self.base:,.0f}"
            )
        self.limit = None if max_flops is None else float(max_flops) - self.base  # FLOPs for gated blocks
        self.max_blocks = max_blocks
        self._spent: Tensor | float | None = None
        self._count: Tensor | int | None = None
        self._forced: dict[int, Tensor | bool] = {}

    @classmethod
    def from_policy(cls, policy: GatePolicy | None, costs: Sequence[float] | Tensor, base: float,
                    owner: str = "model") -> BlockBudget | None:
        """The budget of `policy`'s `max_flops` / `max_blocks`, or None when it sets neither."""
        if policy is None or (policy.max_flops is None and policy.max_blocks is None):
            return None
        return cls(costs, base, max_flops=policy.max_flops, max_blocks=policy.max_blocks, owner=owner)

    def _fits(self, cost: float, spent, count):
        fits = True
        if self.limit is not None:
            fits = spent + cost <= self.limit
        if self.max_blocks is not None:
            under = count < self.max_blocks
            fits = under if fits is True else fits & under
        return fits

    def admit(self, index: int, on: Tensor) -> Tensor:
        """The decisions `on` `(B,)` (bool, or float: nonzero is on) of gated block `index`,
        with the ones that would exceed the cap turned off; same dtype. No host sync."""
        wanted = on if on.dtype == torch.bool else on != 0
        if self._spent is None:
            self._spent = torch.zeros(on.shape, dtype=torch.float64, device=on.device)
            self._count = torch.zeros(on.shape, dtype=torch.int64, device=on.device)
        run = wanted & self._fits(self.costs[index], self._spent, self._count)
        self._spent = self._spent + run * self.costs[index]
        self._count = self._count + run
        self._forced[index] = wanted & ~run
        return run if on.dtype == torch.bool else on * run.to(on.dtype)

    def admit_one(self, index: int, on: bool) -> bool:
        """`admit` for a batch of one sample, in Python numbers (no tensor op)."""
        if self._spent is None:
            self._spent, self._count = 0.0, 0
        run = on and bool(self._fits(self.costs[index], self._spent, self._count))
        if run:
            self._spent += self.costs[index]
            self._count += 1
        self._forced[index] = on and not run
        return run

    def apply(self, gates: Tensor) -> Tensor:
        """Decisions made beforehand, `(B, G)` in gate order, capped (`admit` column by column)."""
        return torch.stack([self.admit(i, gates[:, i]) for i in range(gates.shape[1])], dim=1)

    def forced_off(self, batch: int, like: Tensor) -> Tensor:
        """`(batch, G)` in `like`'s dtype and device: 1 where the cap turned a gate off."""
        columns = [self._forced.get(i, False) for i in range(len(self.costs))]
        rows = [torch.as_tensor(c, device=like.device).expand(batch) for c in columns]
        return torch.stack(rows, dim=1).to(like.dtype)


def worst_case_blocks(costs: Sequence[float] | Tensor, base: float, policy: GatePolicy | None) -> float:
    """The most per-sample FLOPs any input can cost under `policy`'s caps.

    Args:
        costs: `(G,)` per-sample FLOPs of each gated block.
        base: per-sample FLOPs paid whatever the gates.
        policy: a `GatePolicy` (its `max_flops` / `max_blocks`), or None (no cap).

    Returns:
        `min(max_flops, base + the max_blocks largest block costs)` (each term only when
        its cap is set; `base + sum(costs)` without a cap).
    """
    ordered = sorted((float(c) for c in (costs.tolist() if isinstance(costs, Tensor) else costs)), reverse=True)
    if policy is not None and policy.max_blocks is not None:
        ordered = ordered[: policy.max_blocks]
    bound = float(base) + sum(ordered)
    if policy is not None and policy.max_flops is not None:
        bound = min(bound, policy.max_flops)
    return bound
