"""Latency and FLOPs of registered models, timed in the same run (`dynamicnets bench`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models import create_model
from ..flops import counted_flops
from ..profiling.latency import compare, per_sample_ms

DEFAULT_MODELS = ["resnet20", "resnet32", "resnet56", "resnet110"]


@dataclass
class BenchRequest:
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    input_shape: tuple[int, ...] | None = None
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    threads: int | None = None
    min_run_time: float = 0.3


def bench_models(request: BenchRequest) -> list[dict]:
    """One row per (model, batch size): FLOPs, median latency and the ratio to the first model.

    All models of one batch size are timed in the same interleaved run, so the ratios hold
    even when absolute milliseconds drift.
    """
    models = {name: create_model(name).eval() for name in request.models}
    shapes = {name: tuple(request.input_shape or m.default_input_shape) for name, m in models.items()}
    flops = {name: counted_flops(m, torch.zeros((1, *shapes[name]))) for name, m in models.items()}
    rows = []
    for batch in request.batch_sizes:
        inputs = {name: torch.randn(batch, *shapes[name]) for name in models}
        fns = {name: (lambda m=m, x=inputs[name]: m(x)) for name, m in models.items()}
        timed = compare(fns, threads=request.threads, min_run_time=request.min_run_time)
        first = request.models[0]
        for name in request.models:
            rows.append({
                "model": name, "batch_size": batch, "input_shape": "x".join(map(str, shapes[name])),
                "flops": flops[name], "median_ms": timed[name].median_ms,
                "ms_per_sample": per_sample_ms(timed[name], batch),
                f"time_vs_{first}": timed[name].median_ms / timed[first].median_ms,
                f"flops_vs_{first}": flops[name] / flops[first],
                "threads": timed[name].threads,
            })
    return rows
