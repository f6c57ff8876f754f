"""The measured accuracy-FLOPs trade-off of shipped dynamic weights, for their model card.

For a multi-exit model: exit thresholds (max-probability) are fitted to a range of
mean-FLOPs budgets (evenly spaced, plus `TARGET_RATIO` of the full cost: the zoo's target
point) on one seeded half of the validation split and scored on the other half
by the compact executor (samples that exit leave the batch); at every budget the executor
is timed against the full network, in the same run, at batch 1 and at batch 256. Other
dynamic families have no measurement here yet (their card says so).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import make_eval_loader
from ..errors import ConfigError
from ..inference import ExitPolicy, anytime_table, calibrate_thresholds, collect_exit_logits
from ..protocols import MultiExit
from .early_exit import reference_cost, run_compact, split_for_calibration, time_against_full
from .zoo_timing import TIMED_BATCH_SIZES, threads_text, timed_inputs

TARGET_RATIO = 0.7
"""The zoo's target asks for accuracy at >= 30% fewer mean FLOPs: that budget is always a point."""


def curve_budgets(costs: list[float], budgets: int, reference: float | None = None) -> list[float]:
    """`budgets` mean-FLOPs budgets evenly spaced from `costs[0]` to `costs[-1]`, plus
    `TARGET_RATIO * reference` (default `costs[-1]`; a cascade's last member alone) when it
    lies between and is not one of them, ascending."""
    spaced = [costs[0] + (costs[-1] - costs[0]) * i / (budgets - 1) for i in range(budgets)]
    target = TARGET_RATIO * (costs[-1] if reference is None else reference)
    if costs[0] < target < costs[-1] and not any(math.isclose(b, target) for b in spaced):
        spaced.append(target)
    return sorted(spaced)


def measure_trade_off(model: nn.Module, validation: Dataset, input_shape: tuple[int, ...], *, budgets: int = 8,
                      seed: int = 0, threads: int | None = 1, min_run_time: float = 0.3,
                      memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, Any] | None:
    """The calibrated accuracy-FLOPs curve of `model` and its measured speedups.

    Args:
        model: a trained model in eval mode.
        validation: the validation split, prepared as the model was trained.
        input_shape: one input's shape, e.g. `(3, 32, 32)`.
        budgets: number of mean-FLOPs budgets, evenly spaced from the first exit's cost
            to the full cost (at least 2); `curve_budgets` adds the target point.
        seed: seeds the calibration / evaluation halves.
        threads: CPU threads for timing.
        min_run_time: seconds of timed calls per callable and round.
        memory_format: layout of the timed inputs (e.g. `torch.channels_last` for a model
            converted to it).

    Returns:
        `None` for a model without exits; else a dict with `protocol` (in words),
        `calibration_samples`, `evaluation_samples`, `exit_costs`, `anytime` (accuracy
        and FLOPs of every exit alone, on the evaluation half), and `curve`: one row per
        budget with `budget_flops`, `thresholds` (`None`: that exit never exits),
        `accuracy`, `mean_flops`, `speedup_flops`, `exit_histogram` and, for each batch size `b` of
        `TIMED_BATCH_SIZES`, `speedup_measured_b{b}` and `speedup_flops_b{b}` (the FLOPs
        speedup of exactly the timed samples).

    Raises:
        ConfigError: `budgets` is below 2.
    """
    if not isinstance(model, MultiExit):
        return None
    if budgets < 2:
        raise ConfigError(f"budgets: expected at least 2 points on the curve, got {budgets}")
    model.eval()
    costs = [float(c) for c in model.exit_costs(tuple(input_shape))]
    calibration, evaluation = split_for_calibration(validation, seed)
    with torch.inference_mode():
        cal_logits, cal_targets = collect_exit_logits(model, make_eval_loader(calibration, 256))
        ev_logits, ev_targets = collect_exit_logits(model, make_eval_loader(evaluation, 256))
    timed = timed_inputs(evaluation, memory_format)
    curve = []
    reference = reference_cost(model, costs, input_shape)  # a cascade's last member alone
    for budget in curve_budgets(costs, budgets, reference):
        fitted = calibrate_thresholds(cal_logits, cal_targets, costs, budget, criterion="maxprob")
        policy = ExitPolicy("maxprob", fitted.policy.thresholds)
        scored = run_compact(model, evaluation, policy, costs, 256)
        thresholds = [t if math.isfinite(t) else None for t in policy.thresholds]  # None: never exits there
        row = {"budget_flops": budget, "thresholds": thresholds, "accuracy": scored["accuracy"],
               "mean_flops": scored["mean_flops"], "speedup_flops": reference / scored["mean_flops"],
               "exit_histogram": scored["exit_histogram"]}
        for size in TIMED_BATCH_SIZES:
            timing = time_against_full(model, timed[size], policy, costs, threads=threads,
                                       min_run_time=min_run_time)
            row[f"speedup_measured_b{size}"] = timing["speedup_measured"]
            row[f"speedup_flops_b{size}"] = timing["speedup_flops"]
        curve.append(row)
    return {
        "protocol": ("Max-probability thresholds fitted to each mean-FLOPs budget on one seeded half of the "
                     "validation split, scored on the other half by the compact executor; speedups are the full "
                     f"network's time over the executor's, timed in the same run with {threads_text(threads)}, "
                     f"on {len(timed[1])} samples one at a time (batch 1) and on one batch of "
                     f"{timed[256][0].shape[0]}"),
        "calibration_samples": len(calibration),
        "evaluation_samples": len(evaluation),
        "exit_costs": costs,
        "anytime": anytime_table(ev_logits, ev_targets, costs),
        "curve": curve,
    }
