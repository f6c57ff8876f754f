"""`dynamicnets eval --checkpoint CK [--data SPEC] [--budget 30M | --budget-ms 2.5 | --thresholds ... | --gate-rate 0.5]`."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..pipelines.early_exit import EarlyExitRequest
from ..pipelines.evaluate import EvalRequest, evaluate_checkpoint
from ..profiling.report import format_flops, parse_flops, print_table, write_json
from ..writing import check_writable

SUMMARY = ["model", "data", "split", "samples", "policy", "thresholds", "accuracy", "mean_flops", "full_flops",
           "exit_histogram", "latency_ms_per_sample", "full_latency_ms_per_sample", "speedup_flops",
           "speedup_measured", "latency_ms_batch1", "gate_rate", "block_execution_rate", "protocol"]


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _early_exit_request(args: argparse.Namespace) -> EarlyExitRequest | None:
    if args.budget is None and args.budget_ms is None and args.thresholds is None:
        return None
    return EarlyExitRequest(
        policy=args.policy,
        budget_flops=parse_flops(args.budget, what="--budget") if args.budget is not None else None,
        budget_ms=args.budget_ms,
        thresholds=_floats(args.thresholds, "--thresholds") if args.thresholds is not None else None,
        max_flops=parse_flops(args.max_flops, what="--max-flops") if args.max_flops is not None else None,
    )


def run_eval(args: argparse.Namespace) -> int:
    if args.json:
        check_writable(args.json, "--json")  # before the evaluation, not after it
    result = evaluate_checkpoint(EvalRequest(
        checkpoint=args.checkpoint, data=args.data, split=args.split, batch_size=args.batch_size,
        threads=args.threads, device=args.device, min_run_time=args.min_run_time,
        early_exit=_early_exit_request(args), gate_rate=args.gate_rate,
    ))
    for key in SUMMARY:
        if key not in result:
            continue
        value = result[key]
        if value is None:
            continue
        if key in ("mean_flops", "full_flops"):
            value = f"{format_flops(value)} ({value:.0f})"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        print(f"{key:>27}: {value}")
    if args.anytime and "anytime" in result:
        print()
        print_table(result["anytime"], floatfmt={"accuracy": ".4f", "flops": ".4g"})
    if args.json:
        write_json(args.json, result)
    return 0
