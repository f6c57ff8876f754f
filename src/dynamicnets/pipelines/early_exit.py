"""Early-exit evaluation: choose thresholds, run the compact executor, time it honestly.

Thresholds come from a mean-FLOPs budget (absolute, or a fraction of the full cost), a
measured-latency budget, or are given. They are calibrated on one set and scored on
another (`calibration` / `evaluation`). With a `confidence`, the thresholds meet the
budget on a fresh batch the size of the evaluation set with that probability (not just on
the calibration set), and the result says what mean cost to expect there, with its spread
(`expected_cost`). The speedup the clock shows is measured in the same run as the full
network, on the same samples as the speedup the FLOPs promise for them
(`speedup_flops_timed`), so the two can be compared.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from ..data import make_eval_loader
from ..devices import module_device
from ..errors import ConfigError
from ..inference import (
    CostSpread,
    ExitPolicy,
    anytime_table,
    calibrate_thresholds,
    collect_exit_logits,
    run_early_exit,
)
from ..inference.cost_spread import check_confidence, check_eval_size
from ..profiling.latency import compare, measure
from ..profiling.report import format_flops

POLICIES = ("maxprob", "entropy", "margin", "patience")
DEFAULT_TIMED_SAMPLES = 1024
"""Samples timed by default: the first ones of the evaluation set, in batches."""
MS_FIT_ROUNDS = 4
"""Fits of a `budget_ms` at most: the first to whole-batch exit latencies, the rest each
lowering the target by the overshoot measured on calibration batches."""


@dataclass
class EarlyExitRequest:
    """How to pick the exits. Exactly one of `budget_flops`, `budget_fraction`,
    `budget_ms`, `thresholds`.

    Attributes:
        policy: exit criterion (`maxprob`, `entropy`, `margin`, `patience`).
        budget_flops: mean FLOPs per sample allowed (calibrated on the calibration set).
        budget_fraction: the same, as a fraction in (0, 1] of the full network's cost (for
            a cascade, of its last member alone: `reference_cost`).
        budget_ms: mean measured milliseconds per sample allowed at `batch_size`.
        thresholds: one per exit but the last (patience: agreeing exits in a row).
        max_flops: per-sample compute cap no input can exceed.
        confidence: fit a budget so that it holds on a fresh batch of `eval_size` samples
            with about this probability, in `(0, 1)`; `None`: on the calibration set.
        eval_size: the fresh batch's size; `None`: the evaluation set's size.
        batch_size: batch for inference and timing.
        threads: CPU threads for timing; `None` keeps the current number.
        min_run_time: seconds of timed calls per callable and round.
        timed_samples: how many of the first evaluation samples are timed (in batches
            of `batch_size`); `None`: all of them.
    """

    policy: str = "maxprob"
    budget_flops: float | None = None
    budget_fraction: float | None = None
    budget_ms: float | None = None
    thresholds: list[float] | None = None
    max_flops: float | None = None
    confidence: float | None = None
    eval_size: int | None = None
    batch_size: int = 256
    threads: int | None = None
    min_run_time: float = 0.3
    timed_samples: int | None = DEFAULT_TIMED_SAMPLES

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy: expected one of {', '.join(POLICIES)}, got {self.policy!r}")
        given = [flag for n, flag in (("budget_flops", "--budget"), ("budget_fraction", "--budget"),
                                      ("budget_ms", "--budget-ms"), ("thresholds", "--thresholds"))
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError("early-exit evaluation needs exactly one of --budget, --budget-ms or "
                              f"--thresholds (got {', '.join(given) or 'none'})")
        if self.budget_fraction is not None and not 0.0 < self.budget_fraction <= 1.0:
            raise ConfigError(f"--budget: a fraction of the full cost must lie in (0%, 100%], "
                              f"got {self.budget_fraction:.4g} ({100 * self.budget_fraction:.4g}%)")
        if self.timed_samples is not None and self.timed_samples < 1:
            raise ConfigError(f"--timed-samples: expected a positive count, got {self.timed_samples}")
        check_confidence(self.confidence, "--confidence")
        check_eval_size(self.eval_size, "--eval-size")
        if self.thresholds is not None and (self.confidence is not None or self.eval_size is not None):
            raise ConfigError("--confidence/--eval-size: given thresholds are not fitted to a budget; use them with "
                              "--budget or --budget-ms")

    def resolved_budget(self, full_flops: float) -> float | None:
        """The mean-FLOPs budget, a fraction turned into FLOPs of a network costing `full_flops`."""
        if self.budget_fraction is not None:
            return self.budget_fraction * full_flops
        return self.budget_flops


def split_for_calibration(dataset: Dataset, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Two disjoint seeded halves: thresholds are fitted on one and scored on the other."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    half = len(order) // 2
    return Subset(dataset, order[:half]), Subset(dataset, order[half:])


def exit_latencies_ms(model: nn.Module, x: Tensor, *, threads=None, min_run_time=0.3) -> list[float]:
    """Measured per-sample milliseconds to reach each exit (all samples run that far).

    Args:
        model: a `MultiExitNetwork` in eval mode.
        x: `(B, *input_shape)` a batch representative of deployment.

    Returns:
        `K` cumulative costs in ms per sample, increasing.
    """
    num_exits = model.num_exits
    never = [float("inf")] * (num_exits - 1)
    fns = {}
    for k in range(num_exits):
        cap = model.exit_costs(tuple(x.shape[1:]))[k]
        policy = ExitPolicy("maxprob", never, max_flops=cap)
        fns[k] = lambda p=policy: run_early_exit(model, x, p)
    timed = compare(fns, threads=threads, min_run_time=min_run_time)
    latencies = [timed[k].median_ms / x.shape[0] for k in range(num_exits)]
    for k in range(1, num_exits):  # timing noise must not make a deeper exit look cheaper
        latencies[k] = max(latencies[k], latencies[k - 1])
    return latencies


def timed_batches(dataset: Dataset, samples: int | None, batch_size: int) -> list[Tensor]:
    """The inputs of the first `samples` samples of `dataset` (all when `None`), as
    batches `(<= batch_size, *input_shape)` in order."""
    count = len(dataset) if samples is None else min(samples, len(dataset))
    batches, taken = [], 0
    for x, _ in make_eval_loader(dataset, batch_size):
        batches.append(x[: count - taken])
        taken += batches[-1].shape[0]
        if taken >= count:
            break
    return batches


def spread_report(spread: CostSpread, budget: float, unit: str = "FLOPs") -> dict[str, Any]:
    """What a calibrated policy expects on fresh data: `expected_cost` (one line of text)
    and `cost_spread` (its numbers, the unit, the budget and the probability it holds)."""
    chance = spread.probability_within(budget)
    return {"expected_cost": f"{spread.describe(unit)}; within the budget with probability ≈ {chance:.2f}",
            "cost_spread": {**spread.to_dict(), "unit": unit, "budget": budget, "probability_within_budget": chance}}


def reference_cost(model, costs: Sequence[float], input_shape: Sequence[int]) -> float:
    """Per-sample FLOPs of the static network `model` stands for (`reference_flops`: for a
    cascade its last member alone), else the full pass, `costs[-1]`."""
    reference = getattr(model, "reference_flops", None)
    return float(reference(tuple(input_shape))) if callable(reference) else float(costs[-1])


def _reference_words(model, costs: Sequence[float], full: float) -> str:
    return "full network" if full == float(costs[-1]) else "last cascade member alone"


def _run_reference(model, x: Tensor):
    reference = getattr(model, "reference_forward", None)
    return reference(x) if callable(reference) else model(x)


def choose_policy(model, request: EarlyExitRequest, calib_logits, calib_targets, costs, sample_batch,
                  eval_size: int | None = None, measured_on: Sequence[Tensor] | None = None):
    """The `ExitPolicy` the request asks for, plus what calibration reported (the spread
    for a fresh batch of `request.eval_size`, else `eval_size`, samples). A budget fraction
    is of `reference_cost`. With `max_flops`, the thresholds are fitted over the exits the
    cap affords (every sample leaves at the last of them at the latest; the thresholds of
    the exits beyond it are `inf`), so the fitted cost is the one the capped policy runs.

    A `budget_ms` is first fitted to per-exit latencies of whole batches (`sample_batch`
    run to each exit); a batch that splits across exits runs smaller, slower batches, so
    with `measured_on` (calibration batches, never the scored ones) the fitted rule is
    timed on them and the target lowered by the overshoot, up to `MS_FIT_ROUNDS` fits, until
    the measured ms per sample is within the budget."""
    if request.thresholds is not None:
        return ExitPolicy(request.policy, list(request.thresholds), request.max_flops), {}
    full = reference_cost(model, costs, sample_batch.shape[1:])
    budget_flops = request.resolved_budget(full)
    last = ExitPolicy(request.policy, [float("inf")] * (len(costs) - 1), request.max_flops).last_exit(costs)
    fresh = {"confidence": request.confidence,
             "eval_size": request.eval_size if request.eval_size is not None else eval_size}
    if budget_flops is not None:
        if request.budget_fraction is not None and not costs[0] <= budget_flops:
            raise ConfigError(
                f"--budget {100 * request.budget_fraction:.4g}%: {format_flops(budget_flops)} FLOPs per sample, "
                f"below the first exit's {format_flops(costs[0])} ({100 * costs[0] / full:.4g}% of the "
                f"{_reference_words(model, costs, full)} {format_flops(full)}); the attainable range is "
                f"[{100 * costs[0] / full:.4g}%, 100%]"
            )
        fit_budget = min(budget_flops, costs[last]) if last < len(costs) - 1 else budget_flops
        cal = calibrate_thresholds(calib_logits[:last + 1], calib_targets, costs[:last + 1], fit_budget,
                                   criterion=request.policy, **fresh)
        info = {"calibration_mean_flops": cal.mean_flops, "calibration_accuracy": cal.accuracy,
                **spread_report(cal.spread, budget_flops)}
    else:
        ms = exit_latencies_ms(model, sample_batch, threads=request.threads, min_run_time=request.min_run_time)
        if not ms[0] <= request.budget_ms <= ms[-1]:
            raise ConfigError(f"--budget-ms {request.budget_ms}: outside the attainable range "
                              f"[{ms[0]:.4f}, {ms[-1]:.4f}] ms per sample at batch {sample_batch.shape[0]} "
                              f"(every sample at the first exit .. every sample at the last)")
        cal, spread, measured = _fit_measured_ms(model, request, calib_logits[:last + 1], calib_targets,
                                                 ms[:last + 1], fresh, costs, measured_on)
        info = {"exit_latency_ms": ms, "calibration_ms_per_sample": cal.mean_flops,
                "calibration_accuracy": cal.accuracy, **spread_report(spread, request.budget_ms, "ms"),
                **measured}
    thresholds = [*cal.policy.thresholds, *[float("inf")] * (len(costs) - 1 - last)]
    return ExitPolicy(request.policy, thresholds, request.max_flops), info


def _fit_measured_ms(model, request: EarlyExitRequest, logits, targets, ms: list[float], fresh: dict, costs,
                     batches: Sequence[Tensor] | None):
    """Thresholds for `request.budget_ms` over the exits of `ms`, refitted while the rule,
    timed on `batches`, runs slower than the budget (see `choose_policy`); with a confidence,
    while the upper bound of its spread does. Returns the calibration, its cost spread in
    measured ms (the modelled spread scaled by measured over modelled cost) and the
    measurement."""
    target = min(request.budget_ms, ms[-1])
    measured: dict[str, Any] = {}
    for round_ in range(1, MS_FIT_ROUNDS + 1):
        cal = calibrate_thresholds(logits, targets, ms, target, criterion=request.policy, cost_unit="ms", **fresh)
        spread = cal.spread
        if not batches:
            return cal, spread, measured
        policy = ExitPolicy(request.policy, [*cal.policy.thresholds, *[float("inf")] * (len(costs) - len(ms))],
                            request.max_flops)
        count = sum(b.shape[0] for b in batches)
        with torch.inference_mode():
            timed = measure(lambda: [run_early_exit(model, b, policy, costs=costs) for b in batches],
                            threads=request.threads, min_run_time=request.min_run_time)
        spent = timed.median_ms / count
        scale = spent / cal.mean_flops if cal.mean_flops > 0 else 1.0
        spread = replace(spread, expected_mean=spread.expected_mean * scale, mean_std=spread.mean_std * scale,
                         per_sample_std=spread.per_sample_std * scale,
                         upper=None if spread.upper is None else spread.upper * scale)
        held = spent if spread.upper is None else max(spent, spread.upper)
        measured = {"calibration_measured_ms_per_sample": spent, "budget_ms_fit_rounds": round_}
        if held <= request.budget_ms or target <= ms[0]:
            break
        target = max(ms[0], target * request.budget_ms / held)
    return cal, spread, measured


def run_compact(model, dataset: Dataset, policy: ExitPolicy, costs, batch_size: int) -> dict[str, Any]:
    """The compact executor over a whole data set: accuracy, mean FLOPs, exit histogram."""
    correct, total, flops, hist = 0, 0, 0.0, torch.zeros(model.num_exits, dtype=torch.int64)
    device = module_device(model)
    for x, y in make_eval_loader(dataset, batch_size):
        result = run_early_exit(model, x.to(device), policy, costs=costs)
        correct += int((result.predictions.cpu() == y).sum())
        total += y.shape[0]
        flops += float(result.flops.sum())
        hist += torch.bincount(result.exit_index.cpu(), minlength=model.num_exits)
    return {"accuracy": correct / total, "mean_flops": flops / total, "exit_histogram": hist.tolist(),
            "samples": total}


def time_against_full(model, x: Tensor | Sequence[Tensor], policy: ExitPolicy, costs, *, threads=None,
                      min_run_time=0.3) -> dict[str, Any]:
    """Full network (for a cascade its last member alone: `reference_cost`) vs compact
    executor on the same samples, same run.

    Args:
        model: a multi-exit model in eval mode.
        x: one batch `(B, *input_shape)` or several; every timed call runs all of them.
        policy: the exit rule.
        costs: cumulative FLOPs per sample to reach each exit, `K` values.
        threads: CPU threads for timing; `None` keeps the current number.
        min_run_time: seconds of timed calls per callable and round.

    Returns:
        dict with `timed_samples`, `speedup_measured` (full ÷ early-exit time),
        `speedup_flops` (full ÷ mean FLOPs of *these* samples), their ratio
        `realized_fraction`, `mean_flops` of these samples and ms per sample.
    """
    batches = [x] if isinstance(x, Tensor) else list(x)
    count = sum(b.shape[0] for b in batches)
    with torch.inference_mode():
        timed_flops = sum(float(run_early_exit(model, b, policy, costs=costs).flops.sum()) for b in batches) / count

    def full() -> None:
        for b in batches:
            _run_reference(model, b)

    def early_exit() -> None:
        for b in batches:
            run_early_exit(model, b, policy, costs=costs)

    timed = compare({"full": full, "early_exit": early_exit}, threads=threads, min_run_time=min_run_time)
    speedup_measured = timed["full"].median_ms / timed["early_exit"].median_ms
    speedup_flops = reference_cost(model, costs, batches[0].shape[1:]) / timed_flops
    return {"timed_samples": count, "batch_size": batches[0].shape[0], "mean_flops": timed_flops,
            "speedup_measured": speedup_measured, "speedup_flops": speedup_flops,
            "realized_fraction": speedup_measured / speedup_flops,
            "latency_ms_per_sample": timed["early_exit"].median_ms / count,
            "full_latency_ms_per_sample": timed["full"].median_ms / count}


def evaluate_early_exit(model: nn.Module, calibration: Dataset | None, evaluation: Dataset,
                        request: EarlyExitRequest, input_shape) -> dict[str, Any]:
    """Choose the exits on `calibration`, score them on `evaluation`, time them.

    Args:
        model: a multi-exit model.
        calibration: samples the thresholds are fitted on; unused (may be `None`) when
            `request.thresholds` gives them.
        evaluation: samples scored (and timed: the first `request.timed_samples`).
        request: the exit rule and timing settings.
        input_shape: shape of one input, e.g. `(3, 32, 32)`.

    Returns:
        dict with `policy`, `thresholds`, `accuracy`, `mean_flops`, `full_flops`,
        `exit_histogram`, `speedup_flops` (on every evaluation sample), then on the timed
        samples `timed_samples`, `speedup_flops_timed`, `speedup_measured`,
        `realized_fraction`, `latency_ms_per_sample`; `anytime` (per-exit accuracy and
        cost on `evaluation`) and calibration figures; `budget_ms_overshoot` (measured ms
        per sample over `budget_ms`, minus 1; `None` without a time budget); a budget adds `expected_cost` and
        `cost_spread`, the mean cost expected on a fresh batch of `len(evaluation)` samples
        (or `request.eval_size`) with its spread, which `mean_flops` can be held against.
    """
    model.eval()
    costs = list(model.exit_costs(tuple(input_shape)))
    if request.thresholds is None:
        if calibration is None:
            raise ConfigError("a budget needs calibration samples to fit the thresholds on")
        calib_logits, calib_targets = collect_exit_logits(model, make_eval_loader(calibration, request.batch_size))
    else:
        calib_logits, calib_targets = None, None
    device = module_device(model)
    timed = [b.to(device) for b in timed_batches(evaluation, request.timed_samples, request.batch_size)]
    closed_loop = None
    if request.budget_ms is not None and request.thresholds is None:
        closed_loop = [b.to(device) for b in timed_batches(calibration, request.timed_samples, request.batch_size)]
    policy, info = choose_policy(model, request, calib_logits, calib_targets, costs, timed[0], len(evaluation),
                                 measured_on=closed_loop)
    full = reference_cost(model, costs, input_shape)
    scored = run_compact(model, evaluation, policy, costs, request.batch_size)
    eval_logits, eval_targets = collect_exit_logits(model, make_eval_loader(evaluation, request.batch_size))
    timing = time_against_full(model, timed, policy, costs, threads=request.threads,
                               min_run_time=request.min_run_time)
    return {
        "policy": request.policy,
        "thresholds": list(policy.thresholds),
        "max_flops": request.max_flops,
        "budget_flops": request.resolved_budget(full),
        "budget_fraction": request.budget_fraction,
        "budget_ms": request.budget_ms,
        "budget_confidence": request.confidence,
        **scored,
        "full_flops": full,
        "exit_costs": costs,
        "speedup_flops": full / scored["mean_flops"],
        "timed_samples": timing["timed_samples"],
        "speedup_flops_timed": timing["speedup_flops"],
        "speedup_measured": timing["speedup_measured"],
        "realized_fraction": timing["realized_fraction"],
        "latency_ms_per_sample": timing["latency_ms_per_sample"],
        "full_latency_ms_per_sample": timing["full_latency_ms_per_sample"],
        "budget_ms_overshoot": (timing["latency_ms_per_sample"] / request.budget_ms - 1
                                if request.budget_ms is not None else None),
        "timing": timing,
        "anytime": anytime_table(eval_logits, eval_targets, costs),
        **info,
    }


def evaluate_anytime(model: nn.Module, evaluation: Dataset, input_shape, batch_size: int = 256) -> dict[str, Any]:
    """Every exit on its own over `evaluation` (no exit rule, nothing calibrated).

    Returns:
        dict with `accuracy` (of the last exit), `mean_flops` (the last exit's cost),
        `full_flops` (`reference_cost`: the last exit's cost, or a cascade's last member
        alone), `exit_costs`, `samples` and `anytime`: one row per exit with its accuracy
        and cumulative FLOPs per sample.
    """
    model.eval()
    costs = list(model.exit_costs(tuple(input_shape)))
    full = reference_cost(model, costs, input_shape)
    logits, targets = collect_exit_logits(model, make_eval_loader(evaluation, batch_size))
    table = anytime_table(logits, targets, costs)
    return {"accuracy": table[-1]["accuracy"], "mean_flops": float(costs[-1]), "full_flops": full,
            "speedup_flops": full / float(costs[-1]), "exit_costs": costs, "samples": int(targets.shape[0]),
            "anytime": table}

