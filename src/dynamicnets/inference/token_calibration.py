"""Fitting a token-pruning model's `TokenPolicy` to a mean-FLOPs budget.

A keep ratio gives every sample the same cost; a score threshold lets easy images keep
fewer tokens than hard ones at the same mean cost. `calibrate_token_policy` finds the
one threshold (or ratio), shared by every stage, whose mean per-sample FLOPs on a
calibration set is the largest within the budget, by bisection: the cost only falls as the
threshold rises (or the ratio falls).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..layers.token_batching import TokenBatching
from .token_policy import TokenPolicy


@dataclass(frozen=True)
class TokenCalibration:
    """What `calibrate_token_policy` found.

    Attributes:
        policy: the fitted policy.
        mean_flops: its mean per-sample FLOPs on the calibration set.
        budget_flops: the budget asked for.
        evaluations: passes over the calibration set it took.
    """

    policy: TokenPolicy
    mean_flops: float
    budget_flops: float
    evaluations: int


def calibrate_token_policy(
    model: nn.Module,
    loader: Iterable,
    budget_flops: float,
    *,
    by: Literal["threshold", "keep_ratio"] = "threshold",
    token_batching: TokenBatching | str = TokenBatching.PACK,
    iterations: int = 12,
) -> TokenCalibration:
    """The `TokenPolicy` whose mean `out.flops` on `loader` is the largest within `budget_flops`.

    Args:
        model: a token-pruning model whose forward takes `policy=TokenPolicy(...)`
            (DynamicViT, EViT); run in eval mode, without gradients.
        loader: calibration batches `(x, y)` (or `x`); iterated once per evaluation.
        budget_flops: mean FLOPs per sample.
        by: fit one `threshold` in [0, 1) or one `keep_ratio` in (0, 1] for every stage.
        token_batching: the batching of the returned policy (costs do not depend on it).
        iterations: bisection steps.

    Returns:
        `TokenCalibration`.

    Raises:
        ConfigError: a non-positive budget or iteration count, an unknown `by`, or a
            budget below what the cheapest policy of that kind costs.
    """
    if not budget_flops > 0:
        raise ConfigError(f"calibrate_token_policy: budget_flops must be > 0, got {budget_flops!r}")
    if by not in ("threshold", "keep_ratio"):
        raise ConfigError(f"calibrate_token_policy: by must be 'threshold' or 'keep_ratio', got {by!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"calibrate_token_policy: iterations must be an int >= 1, got {iterations!r}")

    def policy_at(value: float) -> TokenPolicy:
        return TokenPolicy(**{by: value}, token_batching=token_batching)

    evaluations = 0

    def cost(value: float) -> float:
        nonlocal evaluations
        evaluations += 1
        return _mean_flops(model, loader, policy_at(value))

    # cheap end and generous end of the search interval
    cheap, rich = (1 - 1e-6, 0.0) if by == "threshold" else (1e-6, 1.0)
    rich_cost = cost(rich)
    if rich_cost <= budget_flops:
        return TokenCalibration(policy_at(rich), rich_cost, float(budget_flops), evaluations)
    cheap_cost = cost(cheap)
    if cheap_cost > budget_flops:
        raise ConfigError(f"calibrate_token_policy: a budget of {budget_flops:,.0f} FLOPs is below the cheapest "
                          f"{by} policy ({cheap_cost:,.0f} FLOPs per sample)")
    best, best_cost = cheap, cheap_cost
    for _ in range(iterations):
        middle = (cheap + rich) / 2
        spent = cost(middle)
        if spent <= budget_flops:
            best, best_cost, cheap = middle, spent, middle
        else:
            rich = middle
    return TokenCalibration(policy_at(best), best_cost, float(budget_flops), evaluations)


@torch.no_grad()
def _mean_flops(model: nn.Module, loader: Iterable, policy: TokenPolicy) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            flops = model(x, policy=policy).flops
            total += float(flops.double().sum())
            count += flops.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("calibrate_token_policy: the calibration loader yielded no samples")
    return total / count
