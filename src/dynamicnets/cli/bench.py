"""`dynamicnets bench [MODEL ...]`: same-run latency ratios and FLOPs of models."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..pipelines.bench import DEFAULT_MODELS, BenchRequest, bench_models
from ..profiling.report import format_flops, print_table, write_json
from ..writing import check_writable


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{what}: expected comma-separated positive integers, got {text!r}")
    return values


def run_bench(args: argparse.Namespace) -> int:
    if args.json:
        check_writable(args.json, "--json")  # before the benchmark, not after it
    request = BenchRequest(
        models=args.models or list(DEFAULT_MODELS),
        input_shape=tuple(_ints(args.input_shape, "--input-shape")) if args.input_shape else None,
        batch_sizes=_ints(args.batch_sizes, "--batch-sizes"),
        threads=args.threads,
        min_run_time=args.min_run_time,
    )
    rows = bench_models(request)
    print_table([{**row, "flops": format_flops(row["flops"])} for row in rows])
    if args.json:
        write_json(args.json, rows)
    return 0
