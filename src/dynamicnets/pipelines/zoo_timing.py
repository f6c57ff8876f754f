"""Scoring and same-run timing shared by the zoo's measurements (exits, gates, widths, spatial gates, token
pruning, anchors).

A measurement scores callables on the evaluation half of the validation split and times
them against one reference (a static network) in one `profiling.latency.compare` run,
interleaved in rounds, at batch 1 (`BATCH1_SAMPLES` samples one at a time) and at batch
256: the speedups it reports are ratios of times measured together, never milliseconds
compared across runs.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..data import make_eval_loader
from ..errors import ConfigError
from ..profiling.latency import compare
from .early_exit import timed_batches

TIMED_BATCH_SIZES = (1, 256)
"""Batch sizes the callables are timed at."""

BATCH1_SAMPLES = 64
"""Samples timed one at a time at batch 1."""

Call = Callable[[Tensor], Any]
"""A model run: `(B, *input_shape) -> DynamicOutput` (with `logits (B, C)`, `flops (B,)`)."""


def timed_inputs(evaluation: Dataset,
                 memory_format: torch.memory_format = torch.contiguous_format) -> dict[int, list[Tensor]]:
    """The timed inputs: batch size -> batches, `BATCH1_SAMPLES` single samples `(1, ...)`
    for 1 and the first 256 samples as one batch for 256, in `memory_format`."""
    timed = {1: [b[i:i + 1] for b in timed_batches(evaluation, BATCH1_SAMPLES, 256) for i in range(b.shape[0])],
             256: timed_batches(evaluation, 256, 256)}
    return {size: [b.contiguous(memory_format=memory_format) for b in batches] for size, batches in timed.items()}


def score(call: Call, dataset: Dataset, decision: str | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Accuracy and mean reported FLOPs of `call` over `dataset`.

    Args:
        call: a model run (see `Call`).
        dataset: `(x, y)` samples.
        decision: a `decisions` key whose `(B,)` values to collect, or `None`.

    Returns:
        dict with `accuracy`, `mean_flops` (mean of `out.flops`) and, with `decision`,
        `decisions` `(N,)`, the values in dataset order.
    """
    correct = samples = 0
    flops = 0.0
    chosen = []
    with torch.inference_mode():
        for x, y in make_eval_loader(dataset, batch_size):
            out = call(x)
            correct += int((out.logits.argmax(1) == y).sum())
            samples += y.shape[0]
            flops += float(out.flops.sum())
            if decision is not None:
                chosen.append(out.decisions[decision].reshape(-1).cpu())
    found = {"accuracy": correct / samples, "mean_flops": flops / samples}
    if decision is not None:
        found["decisions"] = torch.cat(chosen)
    return found


def mean_flops(call: Call, batches: list[Tensor]) -> float:
    """Mean reported per-sample FLOPs of `call` over exactly `batches`."""
    with torch.inference_mode():
        total = sum(float(call(b).flops.sum()) for b in batches)
    return total / sum(b.shape[0] for b in batches)


def speedups(reference: Call, calls: Mapping[str, Call], batches: list[Tensor], *, threads: int | None,
             min_run_time: float) -> dict[str, float]:
    """The reference's time over each call's time on `batches`, all timed in one run.

    Args:
        reference: the static network's run.
        calls: name -> run to time against it (a name must not be `"reference"`).
        batches: the inputs, each run in turn per timed call.
        threads: CPU threads for timing (`None`: the current setting).
        min_run_time: seconds of timed calls per callable and round.

    Returns:
        name -> measured speedup (above 1: faster than the reference).
    """
    def over(fn: Call) -> Callable[[], None]:
        def run() -> None:
            for b in batches:
                fn(b)
        return run

    if "reference" in calls:
        raise ConfigError("speedups: 'reference' names the reference run; give the other runs other names")
    fns = {"reference": over(reference), **{name: over(fn) for name, fn in calls.items()}}
    with torch.inference_mode():
        timed = compare(fns, threads=threads, min_run_time=min_run_time)
    return {name: timed["reference"].median_ms / timed[name].median_ms for name in calls}


def threads_text(threads: int | None) -> str:
    """`threads` in words, for a protocol sentence."""
    return "the default threads" if threads is None else "1 thread" if threads == 1 else f"{threads} threads"


def timed_speedups(reference: Call, runs: list[Call], timed: Mapping[int, list[Tensor]], *, threads: int | None,
                   min_run_time: float) -> list[dict[str, float]]:
    """Every run timed against `reference` in one run per batch size of `TIMED_BATCH_SIZES`.

    Args:
        reference: the static network's run.
        runs: the curve's points, in order.
        timed: batch size -> inputs (`timed_inputs`).
        threads, min_run_time: as `speedups`.

    Returns:
        one dict per run with, for each batch size `b`, `speedup_measured_b{b}` (the
        reference's time over the run's) and `speedup_flops_b{b}` (the reference's mean
        reported FLOPs over the run's, on exactly the timed samples).
    """
    rows: list[dict[str, float]] = [{} for _ in runs]
    for size in TIMED_BATCH_SIZES:
        batches = timed[size]
        reference_flops = mean_flops(reference, batches)
        measured = speedups(reference, {str(i): run for i, run in enumerate(runs)}, batches, threads=threads,
                            min_run_time=min_run_time)
        for i, (row, run) in enumerate(zip(rows, runs)):
            row[f"speedup_measured_b{size}"] = measured[str(i)]
            row[f"speedup_flops_b{size}"] = reference_flops / mean_flops(run, batches)
    return rows


def scored_anchor(anchor: Call | None, name: str | None, evaluation: Dataset) -> dict[str, Any] | None:
    """`{"name", "accuracy", "flops"}` of the static anchor on `evaluation` (`flops`: its mean
    reported per-sample FLOPs), or `None` without one."""
    if anchor is None:
        return None
    scored = score(anchor, evaluation)
    return {"name": name, "accuracy": scored["accuracy"], "flops": scored["mean_flops"]}


def decreasing_fractions(values: Sequence[float], name: str, what: str) -> list[float]:
    """`values` checked: numbers in `(0, 1)`, strictly decreasing.

    Args:
        values: the fractions.
        name: the argument's name, for the error.
        what: what the fractions are, in words (e.g. "max_density caps").

    Raises:
        ConfigError: naming `name` and what was expected.
    """
    found = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else [values]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in found) or any(
            a <= b for a, b in zip(found, found[1:])):
        raise ConfigError(f"{name}: expected {what} in (0, 1), strictly decreasing, got {values!r}")
    return [float(v) for v in found]
