"""Scoring and timing a dynamic-resolution network beside the static networks it is held against.

A *case* is a model and how it is run: `(model, {})` for a static network or the predictor's
own choice, `(model, {"resolution_index": i})` to force every sample to resolution `i`,
`(model, {"policy": ResolutionPolicy(...)})` for a calibrated policy. `score_case` gives a
case's accuracy, mean FLOPs and chosen-resolution histogram over a data set; `time_cases`
times several cases on the same inputs in one interleaved run and reports, beside each
case's time, the mean FLOPs of exactly the timed samples, so that a FLOPs speedup and a
measured speedup computed from it describe the same work.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..inference.resolution_policy import ResolutionPolicy
from ..outputs import DynamicOutput
from ..profiling.latency import compare

Case = tuple[nn.Module, dict]


def forward_case(model: nn.Module, x: Tensor, *, resolution_index: int | None = None,
                 policy: ResolutionPolicy | None = None) -> DynamicOutput:
    """One forward pass of a case.

    Args:
        model: a static classifier or a dynamic-resolution model, in eval mode.
        x: `(B, C, H, W)` inputs.
        resolution_index: force every sample to this resolution (dynamic model only).
        policy: the `ResolutionPolicy` choosing each sample's resolution (dynamic model only).

    Returns:
        the model's `DynamicOutput` (`logits (B, K)`, `flops (B,)`, decisions).
    """
    kwargs: dict[str, Any] = {}
    if resolution_index is not None:
        kwargs["resolution_index"] = torch.full((x.shape[0],), int(resolution_index), dtype=torch.long,
                                                device=x.device)
    if policy is not None:
        kwargs["policy"] = policy
    return model(x, **kwargs)


@torch.no_grad()
def score_case(model: nn.Module, loader: Iterable, *, resolution_index: int | None = None,
               policy: ResolutionPolicy | None = None,
               memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, Any]:
    """Accuracy, mean per-sample FLOPs and chosen resolutions of a case over `loader`.

    Args:
        model: as `forward_case`.
        loader: `(x (B, C, H, W), y (B,))` batches.
        resolution_index, policy: as `forward_case`.
        memory_format: layout the inputs are put in (e.g. `torch.channels_last`).

    Returns:
        dict with `accuracy`, `mean_flops`, `samples` and `resolution_histogram` (samples per
        resolution, smallest first; `None` for a model without a resolution decision).

    Raises:
        ConfigError: `loader` yields no sample.
    """
    correct = count = 0
    flops = 0.0
    chosen: Tensor | None = None
    for x, y in loader:
        out = forward_case(model, x.contiguous(memory_format=memory_format), resolution_index=resolution_index,
                           policy=policy)
        correct += int((out.logits.argmax(1) == y).sum())
        count += int(y.shape[0])
        flops += float(out.flops.sum())
        if "resolution_index" in out.decisions:
            found = torch.bincount(out.decisions["resolution_index"].cpu(), minlength=len(model.resolutions))
            chosen = found if chosen is None else chosen + found
    if count == 0:
        raise ConfigError("score_case: the loader yielded no sample")
    return {"accuracy": correct / count, "mean_flops": flops / count, "samples": count,
            "resolution_histogram": None if chosen is None else chosen.tolist()}


def run_case(model: nn.Module, batches: Sequence[Tensor], **case: Any) -> None:
    """Run a case on every batch of `batches` (what `time_cases` times); `case` holds the
    keywords of `forward_case`."""
    for x in batches:
        forward_case(model, x, **case)


def time_cases(cases: Mapping[str, Case], batches: Sequence[Tensor], *, threads: int | None = None,
               min_run_time: float = 0.3, rounds: int = 3) -> dict[str, dict[str, Any]]:
    """Time every case on the same batches, interleaved in rounds (`profiling.latency.compare`).

    Args:
        cases: name -> `(model, keywords of forward_case)`.
        batches: inputs `(b, C, H, W)`, all of one batch size `b` but maybe the last; every
            timed call runs all of them.
        threads: CPU threads while timing; `None` keeps the current number.
        min_run_time: seconds of timed calls per case and round.
        rounds: interleaved rounds.

    Returns:
        name -> dict with `median_ms` (one call over every batch), `ms_per_sample`,
        `mean_flops` (per sample, over exactly the timed samples), `timed_samples` and
        `batch_size`. Quote ratios between cases of one call, not absolute times.

    Raises:
        ConfigError: no case or no batch.
    """
    if not cases or not batches:
        raise ConfigError(f"time_cases: expected at least one case and one batch, got {len(cases)} case(s) and "
                          f"{len(batches)} batch(es)")
    count = sum(int(b.shape[0]) for b in batches)
    flops = {}
    with torch.inference_mode():
        for name, (model, case) in cases.items():
            flops[name] = sum(float(forward_case(model, b, **case).flops.sum()) for b in batches) / count
    fns = {name: (lambda m=model, c=case: run_case(m, batches, **c)) for name, (model, case) in cases.items()}
    timed = compare(fns, threads=threads, min_run_time=min_run_time, rounds=rounds)
    return {name: {"median_ms": timed[name].median_ms, "ms_per_sample": timed[name].median_ms / count,
                   "mean_flops": flops[name], "timed_samples": count, "batch_size": int(batches[0].shape[0])}
            for name in cases}
