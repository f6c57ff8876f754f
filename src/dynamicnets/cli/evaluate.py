"""`dynamicnets eval --checkpoint CK [--data SPEC] [--json FILE]`."""
from __future__ import annotations

import argparse

from ..pipelines.evaluate import EvalRequest, evaluate_checkpoint
from ..profiling.report import format_flops, write_json


def run_eval(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(EvalRequest(
        checkpoint=args.checkpoint, data=args.data, split=args.split,
        batch_size=args.batch_size, threads=args.threads, device=args.device,
    ))
    for key, value in result.items():
        if key in ("mean_flops", "full_flops"):
            value = f"{format_flops(value)} ({value:.0f})"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        print(f"{key:>24}: {value}")
    if args.json:
        write_json(args.json, result)
    return 0
