"""Fitting a token-pruning model's `TokenPolicy` to a mean-FLOPs budget.

A keep ratio gives every sample the same cost; a score threshold lets easy images keep
fewer tokens than hard ones at the same mean cost. `calibrate_token_policy` finds the
one threshold (or ratio), shared by every stage, whose mean per-sample FLOPs on a
calibration set is the largest within the budget, by bisection: the cost only falls as the
threshold rises (or the ratio falls). With a `confidence`, the upper confidence bound of
the mean cost over a fresh batch of `eval_size` samples must be within the budget instead
(`cost_spread`); every result reports the spread it expects.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..layers.token_batching import TokenBatching
from .cost_spread import CostSpread, check_confidence, check_eval_size, cost_spread, within_budget
from .token_policy import TokenPolicy


@dataclass(frozen=True)
class TokenCalibration:
    """What `calibrate_token_policy` found.

    Attributes:
        policy: the fitted policy.
        mean_flops: its mean per-sample FLOPs on the calibration set.
        budget_flops: the budget asked for.
        evaluations: passes over the calibration set it took.
        spread: the mean FLOPs expected on `spread.eval_size` fresh samples, its standard
            deviation and, with a confidence, its upper bound (`<= budget_flops` then).
    """

    policy: TokenPolicy
    mean_flops: float
    budget_flops: float
    evaluations: int
    spread: CostSpread | None = None


def calibrate_token_policy(
    model: nn.Module,
    loader: Iterable,
    budget_flops: float,
    *,
    by: Literal["threshold", "keep_ratio"] = "threshold",
    token_batching: TokenBatching | str = TokenBatching.PACK,
    iterations: int = 12,
    confidence: float | None = None,
    eval_size: int | None = None,
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
        confidence: `None`: the mean cost on `loader` meets the budget. A probability in
            `(0, 1)`: its upper confidence bound over `eval_size` fresh samples does, so a
            fresh batch of that size (i.i.d. data) meets it with about this probability.
        eval_size: that batch's size; `None`: the expected cost per sample.

    Returns:
        `TokenCalibration`.

    Raises:
        ConfigError: a non-positive budget or iteration count, an unknown `by`, a
            confidence outside `(0, 1)`, or a budget below what the cheapest policy of
            that kind costs.
    """
    if not budget_flops > 0:
        raise ConfigError(f"calibrate_token_policy: budget_flops must be > 0, got {budget_flops!r}")
    if by not in ("threshold", "keep_ratio"):
        raise ConfigError(f"calibrate_token_policy: by must be 'threshold' or 'keep_ratio', got {by!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"calibrate_token_policy: iterations must be an int >= 1, got {iterations!r}")
    confidence = check_confidence(confidence, "calibrate_token_policy")
    eval_size = check_eval_size(eval_size, "calibrate_token_policy")

    def policy_at(value: float) -> TokenPolicy:
        return TokenPolicy(**{by: value}, token_batching=token_batching)

    evaluations = 0

    def cost(value: float) -> Tensor:
        nonlocal evaluations
        evaluations += 1
        return _per_sample_flops(model, loader, policy_at(value))

    def fits(spent: Tensor) -> bool:
        return within_budget(spent, budget_flops, eval_size=eval_size, confidence=confidence)

    def result(value: float, spent: Tensor) -> TokenCalibration:
        spread = cost_spread(spent, eval_size=eval_size, confidence=confidence)
        return TokenCalibration(policy_at(value), spread.expected_mean, float(budget_flops), evaluations, spread)

    # cheap end and generous end of the search interval
    cheap, rich = (1 - 1e-6, 0.0) if by == "threshold" else (1e-6, 1.0)
    rich_cost = cost(rich)
    if fits(rich_cost):
        return result(rich, rich_cost)
    cheap_cost = cost(cheap)
    if not fits(cheap_cost):
        bound = "" if confidence is None else f", {100 * confidence:.4g}% upper bound on a fresh batch"
        raise ConfigError(f"calibrate_token_policy: a budget of {budget_flops:,.0f} FLOPs is below the cheapest "
                          f"{by} policy ({float(cheap_cost.double().mean()):,.0f} FLOPs per sample{bound})")
    best, best_cost = cheap, cheap_cost
    for _ in range(iterations):
        middle = (cheap + rich) / 2
        spent = cost(middle)
        if fits(spent):
            best, best_cost, cheap = middle, spent, middle
        else:
            rich = middle
    return result(best, best_cost)


@torch.no_grad()
def _per_sample_flops(model: nn.Module, loader: Iterable, policy: TokenPolicy) -> Tensor:
    """`(N,)` float64 FLOPs of every sample of `loader` under `policy`."""
    was_training = model.training
    model.eval()
    spent = []
    try:
        for batch in loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            spent.append(model(x, policy=policy).flops.detach().double().cpu().flatten())
    finally:
        model.train(was_training)
    if not spent or sum(s.shape[0] for s in spent) == 0:
        raise ConfigError("calibrate_token_policy: the calibration loader yielded no samples")
    return torch.cat(spent)
