"""`dynamicnets eval (--checkpoint CK | --model NAME --pretrained [TAG]) [--data SPEC] [--split val|test|all]
[--budget 30M | --budget 50% | --budget-ms 2.5 | --thresholds ... | --gate-rate 0.5]
[--confidence 0.95 [--eval-size N]] [--anytime] [--anchor CK|NAME:TAG]`."""
from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from ..pipelines.early_exit import EarlyExitRequest
from ..pipelines.evaluate import EvalRequest, evaluate_checkpoint
from ..profiling.report import format_flops, parse_flops, print_table, write_json
from ..writing import check_writable

# Printed in this order: what was scored and how, then accuracy and FLOPs on every scored
# sample, then the timings, and the FLOPs speedup of exactly the timed samples beside the
# measured one.
SUMMARY = ["model", "pretrained", "sha256", "data", "split", "scored_on", "preprocessing", "preprocessing_converted",
           "protocol", "samples", "policy", "budget_flops", "budget_ms", "calibration_measured_ms_per_sample",
           "budget_ms_fit_rounds", "thresholds", "gate_rate", "max_flops",
           "accuracy", "mean_flops",
           "full_flops", "speedup_flops", "exit_histogram", "resolution_histogram", "width_histogram",
           "block_execution_rate",
           "timed_samples", "latency_ms_per_sample", "full_latency_ms_per_sample", "latency_ms_batch1",
           "speedup_flops_timed", "speedup_measured", "realized_fraction",
           "anchor", "anchor_accuracy", "accuracy_vs_anchor", "anchor_flops", "speedup_flops_vs_anchor",
           "speedup_measured_vs_anchor", "realized_fraction_vs_anchor", "speedup_vs_anchor_batch1"]

# Timing noise between two measurements of the same thing stays below this on an idle machine.
OVERSHOOT_NOTED = 0.05


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def parse_budget(text: str) -> tuple[float | None, float | None]:
    """`--budget` as `(flops, fraction)`: `"30M"` -> `(30e6, None)`, `"50%"` -> `(None, 0.5)`.

    Raises:
        ConfigError: naming `--budget`, when the text is neither FLOPs nor a percentage.
    """
    text = text.strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ConfigError(f"--budget: cannot read {text!r} as a percentage of the full cost; "
                              "expected e.g. 50%") from None
        return None, percent / 100
    return parse_flops(text, what="--budget"), None


def _early_exit_request(args: argparse.Namespace) -> EarlyExitRequest | None:
    if args.budget is None and args.budget_ms is None and args.thresholds is None:
        return None
    budget_flops, budget_fraction = parse_budget(args.budget) if args.budget is not None else (None, None)
    return EarlyExitRequest(
        policy=args.policy,
        budget_flops=budget_flops,
        budget_fraction=budget_fraction,
        budget_ms=args.budget_ms,
        thresholds=_floats(args.thresholds, "--thresholds") if args.thresholds is not None else None,
        max_flops=parse_flops(args.max_flops, what="--max-flops") if args.max_flops is not None else None,
    )


def run_eval(args: argparse.Namespace) -> int:
    if args.json:
        check_writable(args.json, "--json")  # before the evaluation, not after it
    early_exit = _early_exit_request(args)  # carries --max-flops; without a rule it caps a gated ResNet's gates
    result = evaluate_checkpoint(EvalRequest(
        checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained, data=args.data, split=args.split,
        batch_size=args.batch_size,
        threads=args.threads, device=args.device, min_run_time=args.min_run_time,
        early_exit=early_exit, anytime=args.anytime, gate_rate=args.gate_rate,
        gate_max_flops=parse_flops(args.max_flops, what="--max-flops") if early_exit is None and args.max_flops
        else None,
        confidence=args.confidence, eval_size=args.eval_size,
        timed_samples=args.timed_samples or None, anchor=args.anchor,
    ))
    for key in SUMMARY:
        if key not in result:
            continue
        value = result[key]
        if value is None:
            continue
        if key in ("mean_flops", "full_flops", "budget_flops", "max_flops", "anchor_flops"):
            value = f"{format_flops(value)} ({value:.0f})"
            if key == "budget_flops" and result.get("budget_fraction") is not None:
                value += f", {100 * result['budget_fraction']:.4g}% of full_flops"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        print(f"{key:>27}: {value}")
    overshoot = result.get("budget_ms_overshoot")
    if overshoot is not None and overshoot > OVERSHOOT_NOTED:
        print(f"note: the measured {result['latency_ms_per_sample']:.4f} ms per sample exceed --budget-ms "
              f"{result['budget_ms']:g} by {100 * overshoot:.0f}% on the scored samples (on the calibration "
              f"batches the rule measured {result.get('calibration_measured_ms_per_sample', float('nan')):.4f} ms "
              f"after {result.get('budget_ms_fit_rounds', 1)} fit(s)): the halves, or the machine's load, "
              "differ; ask for less to meet it", file=sys.stderr)
    if result.get("expected_cost"):  # a fitted budget: the mean cost to expect on fresh data
        print(f"{'expected_cost':>27}: {result['expected_cost']}")
    if "anytime" in result:
        print()
        print_table([{**row, "flops": format_flops(row["flops"])} for row in result["anytime"]],
                    floatfmt={"accuracy": ".4f"})
    if args.json:
        write_json(args.json, result)
    return 0
