"""`dynamicnets bench [MODEL ...]`: same-run latency ratios and FLOPs of models."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..pipelines.bench import DEFAULT_MODELS, BenchRequest, bench_models
from ..profiling.report import print_table, write_json


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{what}: expected comma-separated positive integers, got {text!r}")
    return values


def run_bench(args: argparse.Namespace) -> int:
    request = BenchRequest(
        models=args.models or list(DEFAULT_MODELS),
        input_shape=tuple(_ints(args.input_shape, "--input-shape")) if args.input_shape else None,
        batch_sizes=_ints(args.batch_sizes, "--batch-sizes"),
        threads=args.threads,
        min_run_time=args.min_run_time,
    )
    rows = bench_models(request)
    print_table(rows)
    if args.json:
        write_json(args.json, rows)
    return 0
