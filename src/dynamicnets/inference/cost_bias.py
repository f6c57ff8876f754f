"""A cost-proportional bias on a predictor's scores, fitted to a mean-FLOPs budget.

Predictors that pick one of a few options per sample (a resolution, a width) score each
option, `(N, K)`. Adding `-lam * cost[k] / cost[-1]` to option `k`'s score before the
argmax is one Lagrange multiplier `lam` trading the predictor's preference for compute:
a sample's chosen cost never grows as `lam` grows (the bias of a costlier option falls
faster), so the mean cost is monotone in `lam` and a bisection finds the `lam` that fits
a budget. `lam > 0` pushes samples to cheaper options; `lam < 0` to costlier ones.

The mean cost is a step function of `lam`, changing only where two of a sample's biased
scores tie. The fitted `lam` is moved from the edge a bisection ends on to the middle of
its step, so no sample sits on a tie: the same data batched differently (scores off by
float rounding) decides the same.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .cost_spread import check_confidence, check_eval_size, within_budget


def budget_check(budget: float, confidence: float | None, eval_size: int | None,
                 owner: str) -> Callable[[Tensor], bool]:
    """`fits(per_sample_costs)` for a calibration: the mean within `budget`, or with a
    `confidence` its upper bound over `eval_size` fresh samples (`cost_spread`).

    Raises:
        ConfigError: a confidence outside `(0, 1)` or a bad `eval_size`, naming `owner`.
    """
    confidence = check_confidence(confidence, owner)
    eval_size = check_eval_size(eval_size, owner)

    def fits(spent: Tensor) -> bool:
        return within_budget(spent, budget, eval_size=eval_size, confidence=confidence)

    return fits


def collect_scores(model: nn.Module, data: Tensor | Iterable, predictor: Callable[[Tensor], Tensor],
                   owner: str) -> tuple[Tensor, tuple[int, ...]]:
    """A predictor's scores over calibration data, in eval mode, without gradients.

    Args:
        model: the model `predictor` belongs to (put in eval mode meanwhile).
        data: a `(N, C, H, W)` tensor, or an iterable of batches (tensors or `(x, y)` pairs).
        predictor: `(B, C, H, W) -> (B, K)` scores, e.g. `model.gate_logits`.
        owner: names the caller in errors.

    Returns:
        `(scores (N, K) float64 on the CPU, one input's shape (C, H, W))`.

    Raises:
        ConfigError: `data` is empty.
    """
    was_training = model.training
    model.eval()
    scores, shape = [], None
    with torch.no_grad():
        for x in ([data] if isinstance(data, Tensor) else data):
            x = x[0] if isinstance(x, (tuple, list)) else x
            shape = tuple(x.shape[1:])
            scores.append(predictor(x).double().cpu())
    model.train(was_training)
    if not scores:
        raise ConfigError(f"{owner}: the calibration data is empty")
    scores = torch.cat(scores)
    if not bool(torch.isfinite(scores).all()):
        raise ConfigError(f"{owner}: the predictor's scores on the calibration data are not all finite (NaN/inf); "
                          f"check the model's weights")
    return scores, shape


def checked_bias(bias, owner: str) -> tuple[float, ...] | None:
    """A policy's `bias` as a tuple of floats (`None` stays `None`).

    Raises:
        ConfigError: naming `owner` and the key, for anything but a non-empty list of numbers.
    """
    if bias is None:
        return None
    try:
        values = tuple(float(b) for b in bias)
    except (TypeError, ValueError):
        values = ()
    if not values or any(math.isnan(b) for b in values):
        raise ConfigError(f"{owner}: key 'bias' must be a non-empty list of numbers, got {bias!r}")
    return values


def cost_bias(costs: Tensor, lam: float) -> Tensor:
    """`(K,)` float64 bias `-lam * costs / costs[-1]` for options of ascending `costs (K,)`."""
    return -lam * costs.double() / float(costs[-1])


def biased_choice(scores: Tensor, costs: Tensor, lam: float, cap: int) -> Tensor:
    """`(N,)` option indices: `argmax(scores + cost_bias(costs, lam))`, clamped to `<= cap`."""
    return (scores.double() + cost_bias(costs, lam)).argmax(dim=-1).clamp(max=cap)


def chosen_costs(scores: Tensor, costs: Tensor, lam: float, cap: int) -> Tensor:
    """`(N,)` float64 cost of each sample's chosen option (`costs (K,)`)."""
    return costs.double()[biased_choice(scores, costs, lam, cap)]


def mean_chosen_cost(scores: Tensor, costs: Tensor, lam: float, cap: int) -> float:
    """Mean over the `N` samples of the chosen options' costs (`costs (K,)`)."""
    return float(chosen_costs(scores, costs, lam, cap).mean())


def fit_cost_multiplier(scores: Tensor, costs: Tensor, budget: float, cap: int, *,
                        spend_budget: bool = False, steps: int = 60,
                        fits: Callable[[Tensor], bool] | None = None) -> float:
    """The multiplier `lam` whose chosen costs fit `budget`.

    Args:
        scores: `(N, K)` predictor scores of the calibration samples.
        costs: `(K,)` ascending per-sample cost of each option.
        budget: the mean per-sample cost to stay within (at least `costs[0]`).
        cap: the costliest option index allowed.
        spend_budget: False: the smallest `lam >= 0` within budget (0 when the predictor
            already is: its own choices, moved only as far as the budget needs). True:
            the `lam` (of either sign) with the largest mean cost within budget (a frugal
            predictor is pushed to spend what it may).
        steps: bisection steps.
        fits: `fits(per_sample_costs (N,))` says whether a choice meets the budget; `None`:
            the mean is `<= budget` (`within_budget` with a confidence bounds a fresh batch).
            The mean is monotone in `lam`; an upper confidence bound need not be (the
            spread changes as samples move), so with one the result fits but may not be
            the extreme `lam` that does.

    Returns:
        `lam`, in the middle of its step of the mean cost (see the module docstring); the
        chosen costs at it fit.
    """
    if fits is None:
        def fits(spent: Tensor) -> bool:
            return float(spent.mean()) <= budget

    def ok(lam: float) -> bool:
        return fits(chosen_costs(scores, costs, lam, cap))

    if ok(0.0):
        if not spend_budget:
            return 0.0
        low = -1.0  # find a lam over budget below 0, then bisect [low, 0]
        while ok(low) and low > -1e12:
            low *= 2
        if ok(low):
            return low
        high = 0.0
    else:
        low, high = 0.0, 1.0
        while not ok(high) and high < 1e12:
            high *= 2
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    # the tie the bisection closed in on may compute a hair above `high`: skip it
    following = [b for b in tie_points(scores, costs) if b > high + 1e-9 * (1.0 + abs(high))]
    if not following:
        return high + 1.0
    step_end = min(following)
    return (high + step_end) / 2 if ok((high + step_end) / 2) else high


def tie_points(scores: Tensor, costs: Tensor) -> list[float]:
    """Every `lam` at which two options' biased scores of one sample tie, ascending:
    `(s_j - s_k) * costs[-1] / (c_j - c_k)` over samples and option pairs of unequal cost."""
    s, c = scores.double(), costs.double()
    j, k = torch.triu_indices(c.numel(), c.numel(), offset=1)
    gap = c[j] - c[k]
    keep = gap != 0
    points = (s[:, j[keep]] - s[:, k[keep]]) * float(c[-1]) / gap[keep]
    return sorted(points.flatten().tolist())
