"""Early-exit evaluation: choose thresholds, run the compact executor, time it honestly.

Thresholds come from a mean-FLOPs budget, a measured-latency budget, or are given. They
are calibrated on one set and scored on another (`calibration` / `evaluation`), and the
speedup the clock shows is measured in the same run as the full network on the same
batch, next to the speedup the FLOPs promise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from ..data import make_eval_loader
from ..errors import ConfigError
from ..inference import (
    ExitPolicy,
    anytime_table,
    calibrate_thresholds,
    collect_exit_logits,
    run_early_exit,
)
from ..profiling.latency import compare, measure

POLICIES = ("maxprob", "entropy", "margin", "patience")


@dataclass
class EarlyExitRequest:
    """How to pick the exits. Exactly one of `budget_flops`, `budget_ms`, `thresholds`.

    Attributes:
        policy: exit criterion (`maxprob`, `entropy`, `margin`, `patience`).
        budget_flops: mean FLOPs per sample allowed (calibrated on the calibration set).
        budget_ms: mean measured milliseconds per sample allowed at `batch_size`.
        thresholds: one per exit but the last (patience: agreeing exits in a row).
        max_flops: per-sample compute cap no input can exceed.
        batch_size: batch for inference and timing.
    """

    policy: str = "maxprob"
    budget_flops: float | None = None
    budget_ms: float | None = None
    thresholds: list[float] | None = None
    max_flops: float | None = None
    batch_size: int = 256
    threads: int | None = None
    min_run_time: float = 0.3

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy: expected one of {', '.join(POLICIES)}, got {self.policy!r}")
        given = [n for n in ("budget_flops", "budget_ms", "thresholds") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError("early-exit evaluation needs exactly one of --budget, --budget-ms or "
                              f"--thresholds (got {', '.join(given) or 'none'})")


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


def choose_policy(model, request: EarlyExitRequest, calib_logits, calib_targets, costs, sample_batch):
    """The `ExitPolicy` the request asks for, plus what calibration reported."""
    if request.thresholds is not None:
        return ExitPolicy(request.policy, list(request.thresholds), request.max_flops), {}
    if request.budget_flops is not None:
        cal = calibrate_thresholds(calib_logits, calib_targets, costs, request.budget_flops,
                                   criterion=request.policy)
        info = {"calibration_mean_flops": cal.mean_flops, "calibration_accuracy": cal.accuracy}
    else:
        ms = exit_latencies_ms(model, sample_batch, threads=request.threads, min_run_time=request.min_run_time)
        if not ms[0] <= request.budget_ms <= ms[-1]:
            raise ConfigError(f"--budget-ms {request.budget_ms}: outside the attainable range "
                              f"[{ms[0]:.4f}, {ms[-1]:.4f}] ms per sample at batch {sample_batch.shape[0]} "
                              f"(every sample at the first exit .. every sample at the last)")
        cal = calibrate_thresholds(calib_logits, calib_targets, ms, request.budget_ms, criterion=request.policy)
        info = {"exit_latency_ms": ms, "calibration_ms_per_sample": cal.mean_flops,
                "calibration_accuracy": cal.accuracy}
    return ExitPolicy(request.policy, cal.policy.thresholds, request.max_flops), info


def run_compact(model, dataset: Dataset, policy: ExitPolicy, costs, batch_size: int) -> dict[str, Any]:
    """The compact executor over a whole data set: accuracy, mean FLOPs, exit histogram."""
    correct, total, flops, hist = 0, 0, 0.0, torch.zeros(model.num_exits, dtype=torch.int64)
    for x, y in make_eval_loader(dataset, batch_size):
        result = run_early_exit(model, x, policy, costs=costs)
        correct += int((result.predictions == y).sum())
        total += y.shape[0]
        flops += float(result.flops.sum())
        hist += torch.bincount(result.exit_index, minlength=model.num_exits)
    return {"accuracy": correct / total, "mean_flops": flops / total, "exit_histogram": hist.tolist(),
            "samples": total}


def time_against_full(model, x: Tensor, policy: ExitPolicy, costs, *, threads=None, min_run_time=0.3):
    """Full network vs compact executor on the same batch, same run.

    Returns:
        dict with `speedup_measured` (full ÷ early-exit time), `speedup_flops` (full ÷
        mean FLOPs of this batch), their ratio `realized_fraction`, and ms per sample.
    """
    batch_flops = run_early_exit(model, x, policy, costs=costs).mean_flops()
    timed = compare({"full": lambda: model(x), "early_exit": lambda: run_early_exit(model, x, policy, costs=costs)},
                    threads=threads, min_run_time=min_run_time)
    speedup_measured = timed["full"].median_ms / timed["early_exit"].median_ms
    speedup_flops = float(costs[-1]) / batch_flops
    return {"batch_size": x.shape[0], "speedup_measured": speedup_measured, "speedup_flops": speedup_flops,
            "realized_fraction": speedup_measured / speedup_flops,
            "latency_ms_per_sample": timed["early_exit"].median_ms / x.shape[0],
            "full_latency_ms_per_sample": timed["full"].median_ms / x.shape[0]}


def evaluate_early_exit(model: nn.Module, calibration: Dataset, evaluation: Dataset,
                        request: EarlyExitRequest, input_shape) -> dict[str, Any]:
    """Choose the exits on `calibration`, score them on `evaluation`, time them.

    Returns:
        dict with `policy`, `thresholds`, `accuracy`, `mean_flops`, `full_flops`,
        `exit_histogram`, `latency_ms_per_sample`, `speedup_flops`, `speedup_measured`,
        `anytime` (per-exit accuracy and cost on `evaluation`) and calibration figures.
    """
    model.eval()
    costs = list(model.exit_costs(tuple(input_shape)))
    calib_logits, calib_targets = collect_exit_logits(model, make_eval_loader(calibration, request.batch_size))
    sample_batch = next(iter(make_eval_loader(evaluation, request.batch_size)))[0]
    policy, info = choose_policy(model, request, calib_logits, calib_targets, costs, sample_batch)
    scored = run_compact(model, evaluation, policy, costs, request.batch_size)
    eval_logits, eval_targets = collect_exit_logits(model, make_eval_loader(evaluation, request.batch_size))
    timing = time_against_full(model, sample_batch, policy, costs, threads=request.threads,
                               min_run_time=request.min_run_time)
    return {
        "policy": request.policy,
        "thresholds": list(policy.thresholds),
        "max_flops": request.max_flops,
        "budget_flops": request.budget_flops,
        "budget_ms": request.budget_ms,
        **scored,
        "full_flops": float(costs[-1]),
        "exit_costs": costs,
        "speedup_flops": float(costs[-1]) / scored["mean_flops"],
        "latency_ms_per_sample": timing["latency_ms_per_sample"],
        "full_latency_ms_per_sample": timing["full_latency_ms_per_sample"],
        "speedup_measured": timing["speedup_measured"],
        "timed_batch": timing,
        "anytime": anytime_table(eval_logits, eval_targets, costs),
        **info,
    }

