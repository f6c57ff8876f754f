"""Budgeted batch classification: thresholds that meet a mean-FLOPs budget.

MSDNet's budgeted evaluation: a budget in mean FLOPs per sample fixes how many
samples may leave at each exit. The search runs over geometric exit distributions
`q_k ∝ p**k` (`k = 0..K-1`; small `p` sends most samples out early, large `p` sends
them to the last exit). For one `p`, the thresholds follow from the validation set:
of the samples still running at exit `k`, the `round(N * q_k)` most confident leave,
so `thresholds[k]` lies halfway between the last of them and the next score. The achieved mean
cost is then measured by applying those thresholds to the same validation logits
(exactly the decisions `run_early_exit` takes), and `p` is found by bisection as the
largest one whose achieved mean cost is within the budget.

With a `confidence`, the condition is instead that an upper confidence bound of the mean
cost on a fresh batch of `eval_size` samples is within the budget (`cost_spread`): the
thresholds then meet the budget on new data with probability about `confidence`, where
plain calibration meets it about half the time. Every result reports the spread it
expects (`BudgetCalibration.spread`).

The logits come from one `forward` of the model on the validation split
(`collect_exit_logits`); this chooses thresholds. It is *not* the evaluation: that
runs the compact executor on held-out data and reports the FLOPs it really spent.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..devices import module_device
from ..errors import ConfigError
from ..gates.confidence import ExitCriterion
from .cost_spread import CostSpread, check_confidence, check_eval_size, cost_spread, within_budget
from .executor import costs_with_decisions
from .policy import ExitPolicy


def collect_exit_logits(
    model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None
) -> tuple[list[Tensor], Tensor]:
    """Logits of every exit on every sample of `loader` (eval mode, no grad).

    Args:
        model: a multi-exit model whose forward returns `DynamicOutput.exit_logits`.
        loader: yields `(x, y)` batches, `x (B, *input_shape)`, `y (B,)` int64.
        device: where to run (default: the model's parameters' device).

    Returns:
        `(exit_logits, targets)`: `K` float32 CPU tensors `(N, C)` and `(N,)` int64.
    """
    if device is None:
        device = module_device(model)
    was_training = model.training
    model.eval()
    per_exit: list[list[Tensor]] = []
    targets = []
    try:
        with torch.no_grad():
            for x, y in loader:
                out = model(x.to(device))
                if not per_exit:
                    per_exit = [[] for _ in out.exit_logits]
                for store, logits in zip(per_exit, out.exit_logits):
                    store.append(logits.float().cpu())
                targets.append(y.cpu())
    finally:
        model.train(was_training)
    if not targets:
        raise ConfigError("collect_exit_logits: the loader yielded no batches")
    return [torch.cat(s) for s in per_exit], torch.cat(targets).long()


def anytime_table(exit_logits: Sequence[Tensor], targets: Tensor, costs: Sequence[float]) -> list[dict]:
    """Accuracy and per-sample cost of every exit used alone (anytime prediction).

    Args:
        exit_logits: `K` tensors `(N, C)`.
        targets: `(N,)` int64.
        costs: `K` cumulative per-sample FLOPs.

    Returns:
        `K` dicts `{"exit": k, "flops": costs[k], "accuracy": float in [0, 1]}`.
    """
    _check_lengths(exit_logits, costs)
    return [
        {"exit": k, "flops": float(costs[k]), "accuracy": float((logits.argmax(1) == targets).double().mean())}
        for k, logits in enumerate(exit_logits)
    ]


@dataclass
class BudgetCalibration:
    """Thresholds chosen for a budget and what they achieve on the calibration set.

    Attributes:
        policy: the `ExitPolicy` to run (criterion + `K - 1` thresholds).
        budget_flops: the requested mean FLOPs per sample.
        mean_flops: mean FLOPs per sample achieved on the calibration set (`<= budget`).
        accuracy: accuracy on the calibration set with these exits.
        exit_fractions: fraction of samples leaving at each exit.
        p: the geometric parameter of the chosen exit distribution.
        spread: the mean cost expected on `spread.eval_size` fresh samples, its standard
            deviation and (with a confidence) its upper bound, `<= budget_flops` then;
            `spread.describe()` prints it.
    """

    policy: ExitPolicy
    budget_flops: float
    mean_flops: float
    accuracy: float
    exit_fractions: list[float] = field(default_factory=list)
    p: float = 1.0
    spread: CostSpread | None = None


def exit_decisions(scores: Sequence[Tensor], thresholds: Sequence[float]) -> Tensor:
    """First exit `k` with `scores[k] >= thresholds[k]`, else the last one.

    Args:
        scores: `K` tensors `(N,)` of confidence scores.
        thresholds: `K - 1` numbers.

    Returns:
        `(N,)` int64 exit index per sample.
    """
    num = scores[0].shape[0]
    last = len(scores) - 1
    chosen = torch.full((num,), last, dtype=torch.int64)
    undecided = torch.ones(num, dtype=torch.bool)
    for k, t in enumerate(thresholds):
        take = undecided & (scores[k] >= t)
        chosen[take] = k
        undecided &= ~take
    return chosen


def geometric_fractions(log_p: float, num_exits: int) -> list[float]:
    """`q_k = p**k / sum_j p**j` for `k < num_exits`, computed in log space."""
    logs = torch.arange(num_exits, dtype=torch.float64) * log_p
    return torch.softmax(logs, dim=0).tolist()


def thresholds_for_fractions(scores: Sequence[Tensor], fractions: Sequence[float]) -> list[float]:
    """Thresholds letting (about) `fractions[k]` of all samples leave at exit `k`.

    Args:
        scores: `K` tensors `(N,)` of confidence scores (higher = more confident).
        fractions: `K` numbers summing to 1.

    Returns:
        `K - 1` thresholds; `inf` where no sample should leave.
    """
    num = scores[0].shape[0]
    running = torch.ones(num, dtype=torch.bool)
    thresholds, cumulative, left = [], 0.0, 0
    for k in range(len(scores) - 1):
        cumulative += fractions[k]
        count = min(int(round(cumulative * num)) - left, int(running.sum()))
        if count <= 0:
            thresholds.append(math.inf)
            continue
        ranked = torch.sort(scores[k][running], descending=True).values
        if count < ranked.shape[0] and ranked[count - 1] == ranked[count]:
            # A tie across the cut (e.g. identical inputs so far): only the scores above the
            # tied value leave, never every tied sample (which could be all of them).
            count = int((ranked > ranked[count]).sum())
            if count == 0:
                thresholds.append(math.inf)
                continue
        # Halfway to the next score: the same samples leave here, and a sample whose score
        # is recomputed on a smaller batch (last-bit differences) is not flipped.
        t = float(ranked[count - 1]) if count == ranked.shape[0] else float(ranked[count - 1] + ranked[count]) / 2
        thresholds.append(t)
        leaving = running & (scores[k] >= t)
        left += int(leaving.sum())
        running &= ~leaving
    return thresholds


def calibrate_thresholds(
    exit_logits: Sequence[Tensor],
    targets: Tensor,
    costs: Sequence[float],
    budget_flops: float,
    *,
    criterion: str | ExitCriterion = "maxprob",
    iterations: int = 60,
    cost_unit: str = "FLOPs",
    confidence: float | None = None,
    eval_size: int | None = None,
) -> BudgetCalibration:
    """Choose per-exit thresholds whose mean cost on this set is within `budget_flops`
    (or, with `confidence`, whose mean cost on fresh data is, with that probability).

    Args:
        exit_logits: `K` tensors `(N, C)` from `collect_exit_logits`.
        targets: `(N,)` int64.
        costs: `K` cumulative per-sample FLOPs (`model.exit_costs(input_shape)`).
        budget_flops: mean FLOPs per sample allowed.
        criterion: a score-based criterion (`maxprob`, `entropy`, `margin`).
        iterations: bisection steps over `log p`.
        cost_unit: name of the cost unit in messages. Any additive per-exit cost works
            (e.g. measured cumulative ms per sample with `cost_unit="ms"`); the result's
            `mean_flops` is then in that unit.
        confidence: `None`: the mean cost on this set meets the budget. A probability in
            `(0, 1)`: the upper confidence bound of the mean cost over `eval_size` fresh
            samples meets it, so that, for i.i.d. data, the mean cost of a fresh batch of
            that size is `<= budget_flops` with probability about `confidence`
            (`cost_spread`).
        eval_size: size of the fresh batch the spread (and guarantee) is for; `None`:
            the expected cost per sample (an unlimited batch).

    Returns:
        `BudgetCalibration` (policy, achieved mean FLOPs and accuracy, exit fractions,
        expected spread on `eval_size` fresh samples).

    Raises:
        ConfigError: the budget is outside `[costs[0], costs[-1]]` (the message gives
            the attainable range), the criterion has no score to rank by (patience),
            `confidence` is not in `(0, 1)` or `eval_size` is not a positive int.
    """
    _check_lengths(exit_logits, costs)
    confidence = check_confidence(confidence, "calibrate_thresholds")
    eval_size = check_eval_size(eval_size, "calibrate_thresholds")
    policy = ExitPolicy(criterion=criterion)
    crit = policy.resolve_criterion()
    if crit.uses_history:
        raise ConfigError(
            f"budget calibration ranks samples by a confidence score; criterion {crit.name!r} has integer "
            "thresholds (choose them directly) — use maxprob, entropy or margin"
        )
    if cost_unit == "FLOPs":  # a learned exit's own head is part of what a sample costs
        costs = costs_with_decisions(costs, len(costs) - 1, crit)
    lo_cost, hi_cost = float(costs[0]), float(costs[-1])
    if not lo_cost <= budget_flops <= hi_cost:
        raise ConfigError(
            f"budget {_fmt(budget_flops)} {cost_unit} per sample is outside the attainable range "
            f"[{_fmt(lo_cost)}, {_fmt(hi_cost)}] (every sample at the first exit .. every sample at the last)"
        )
    scores = [crit.score(logits) for logits in exit_logits]
    cost_table = torch.tensor([float(c) for c in costs], dtype=torch.float64)
    num_exits = len(costs)

    def evaluate(log_p: float) -> tuple[list[float], Tensor, bool]:
        thresholds = thresholds_for_fractions(scores, geometric_fractions(log_p, num_exits))
        chosen = exit_decisions(scores, thresholds)
        fits = within_budget(cost_table[chosen], budget_flops, eval_size=eval_size, confidence=confidence)
        return thresholds, chosen, fits

    # log p = -50: everybody at exit 0 (cost costs[0] <= budget, no spread); +50: everybody
    # at the last.
    lo, hi = -50.0, 50.0
    best = evaluate(lo)
    top = evaluate(hi)
    if top[2]:
        lo, best = hi, top
    else:
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            trial = evaluate(mid)
            if trial[2]:
                lo, best = mid, trial
            else:
                hi = mid
    thresholds, chosen, _ = best
    spread = cost_spread(cost_table[chosen], eval_size=eval_size, confidence=confidence)
    stacked = torch.stack(list(exit_logits))  # (K, N, C)
    picked = stacked[chosen, torch.arange(chosen.shape[0])]
    accuracy = float((picked.argmax(1) == targets).double().mean())
    fractions = (torch.bincount(chosen, minlength=num_exits).double() / chosen.shape[0]).tolist()
    return BudgetCalibration(
        policy=ExitPolicy(criterion=criterion, thresholds=thresholds),
        budget_flops=float(budget_flops),
        mean_flops=spread.expected_mean,
        accuracy=accuracy,
        exit_fractions=fractions,
        p=math.exp(lo),
        spread=spread,
    )


def calibrate(
    model: nn.Module,
    loader: Iterable,
    budget_flops: float,
    *,
    criterion: str | ExitCriterion = "maxprob",
    input_shape: Sequence[int] | None = None,
    confidence: float | None = None,
    eval_size: int | None = None,
) -> BudgetCalibration:
    """`collect_exit_logits` on `loader`, then `calibrate_thresholds` for `budget_flops`.

    Args:
        model: a `MultiExitNetwork`.
        loader: the validation split, `(x, y)` batches.
        budget_flops: mean FLOPs per sample.
        criterion: `maxprob`, `entropy` or `margin`.
        input_shape: per-sample input shape for the costs (default: the first batch's;
            needed when `loader` can be iterated only once).
        confidence: meet the budget on a fresh batch of `eval_size` samples with about
            this probability, instead of on `loader` (see `calibrate_thresholds`).
        eval_size: the fresh batch's size; `None`: the expected cost per sample.

    Returns:
        `BudgetCalibration`; `.policy` is what `run_early_exit` takes, `.spread` the cost
        it is expected to spend on fresh data.
    """
    confidence = check_confidence(confidence, "calibrate")
    eval_size = check_eval_size(eval_size, "calibrate")
    if input_shape is None and iter(loader) is loader:
        raise ConfigError("calibrate: pass input_shape when the loader is a one-shot iterator")
    exit_logits, targets = collect_exit_logits(model, loader)
    if input_shape is None:
        first_x, _ = next(iter(loader))
        input_shape = tuple(first_x.shape[1:])
    costs = model.exit_costs(tuple(input_shape))
    return calibrate_thresholds(exit_logits, targets, costs, budget_flops, criterion=criterion,
                                confidence=confidence, eval_size=eval_size)


def _fmt(value: float) -> str:
    """Whole numbers with thousands separators (FLOPs), others with 4 significant digits (ms)."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"


def _check_lengths(exit_logits: Sequence[Tensor], costs: Sequence[float]) -> None:
    if len(exit_logits) != len(costs) or len(costs) == 0:
        raise ConfigError(f"got logits of {len(exit_logits)} exits but {len(costs)} exit costs")
