"""Overhead of dynamic convolutions over a static convolution on this CPU.

64 -> 64 channels, 3x3, 32x32 inputs, batch 32 and batch 1: CondConv (K = 4, 8) and
DY-Conv (K = 4) with their routing functions and kernel mixing included, divided by a
static `nn.Conv2d` of the same shape, all timed interleaved in the same run
(`dynamicnets.profiling.latency.compare`, fixed threads, inference mode, eval mode).
Each of the `--rounds` rounds times every callable back to back; `overhead` is the
median over rounds of the per-round ratio (with its interquartile range), so bursts of
load from other processes disturb it less than a ratio of medians.

Both memory layouts are timed: `overhead` divides by the static conv on the SAME layout
as the dynamic layer's input (the static weight converted to that layout too);
`overhead_vs_best_static` divides by the faster static layout (on this CPU the static
conv is about 2x faster in channels_last at batch 32 with 2 threads).

Run it on a quiet machine: every small op of the dynamic layers opens an OpenMP
parallel region, and when other processes hold the cores each region waits for a
descheduled thread, which inflates the dynamic layers far more than the single static
conv. Check `uptime` (load average well under 1) first. `--profile` prints a
torch.profiler breakdown first (self-time share of each layer's top ops) to see what
limits each layer.

Writes `benchmarks/results/dynamic_params_overhead.json` (one record per layer, batch
size and layout: `layer, batch_size, memory_format, overhead, flops, static_flops, ...`,
FLOPs per sample) and the Markdown table `dynamic_params_overhead.md`.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/dynamic_params_overhead.py
    # a quick trial, results kept out of benchmarks/results:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/dynamic_params_overhead.py --rounds 5 --out /tmp/overhead.json --profile
"""
from __future__ import annotations

import argparse
import copy
import functools
import statistics
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from dynamicnets.layers.cond_conv import RoutedCondConv2d
from dynamicnets.layers.dynamic_conv import DynamicConv2d
from dynamicnets.flops import counted_flops
from dynamicnets.profiling.latency import compare
from dynamicnets.profiling.report import markdown_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_THREADS = 2
CHANNELS, SIZE, KERNEL = 64, 32, 3
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
TARGET = 1.10
COLUMNS = [
    "layer", "batch_size", "memory_format", "overhead", "overhead_iqr", "overhead_vs_best_static",
    "ms", "static_ms", "flops", "static_flops", "flops_ratio",
]


def build_layers(seed: int = 0) -> dict[str, nn.Module]:
    """The static conv and the dynamic layers, eval mode, same geometry."""
    torch.manual_seed(seed)
    args = (CHANNELS, CHANNELS, KERNEL)
    return {
        "static": nn.Conv2d(*args, padding=KERNEL // 2, bias=False).eval(),
        "condconv_k4": RoutedCondConv2d(*args, num_experts=4).eval(),
        "condconv_k8": RoutedCondConv2d(*args, num_experts=8).eval(),
        "dyconv_k4": DynamicConv2d(*args, num_experts=4).eval(),
    }


def per_sample_flops(layers: dict[str, nn.Module]) -> dict[str, int]:
    """Analytic per-sample FLOPs of each layer, checked against `FlopCounterMode`."""
    x = torch.randn(2, CHANNELS, SIZE, SIZE)
    flops = {}
    for name, layer in layers.items():
        if name == "static":
            flops[name] = 2 * layer.weight.numel() * SIZE * SIZE
        else:
            flops[name] = layer.flops(SIZE, SIZE)
        counted = counted_flops(layer, x)
        if counted != 2 * flops[name]:
            raise RuntimeError(
                f"{name}: cost {flops[name]} per sample, FlopCounterMode {counted / 2}"
            )
    return flops


def check_mixture_equivalence(layers: dict[str, nn.Module]) -> None:
    """CondConv output equals the K-convolution mixture of experts before timing."""
    x = torch.randn(3, CHANNELS, SIZE, SIZE)
    with torch.inference_mode():
        for name in ("condconv_k4", "condconv_k8", "dyconv_k4"):
            layer = layers[name]
            y, routing = layer.forward_with_routing(x)
            reference = layer.conv.mixture_of_experts_reference(x, routing)
            if not torch.allclose(y, reference, rtol=1e-4, atol=1e-4):
                raise RuntimeError(f"{name} differs from its mixture-of-experts form")


def make_callables(
    layers: dict[str, nn.Module], batch: int
) -> dict[str, Callable[[], Tensor]]:
    """`"<layer>@<layout>"` -> zero-argument call of the layer on a fixed batch."""
    torch.manual_seed(batch)
    base = torch.randn(batch, CHANNELS, SIZE, SIZE)
    static_cl = copy.deepcopy(layers["static"]).to(memory_format=torch.channels_last)
    fns = {}
    for layout, fmt in LAYOUTS.items():
        x = base.contiguous(memory_format=fmt)
        for name, layer in layers.items():
            module = static_cl if (name == "static" and layout == "channels_last") else layer
            fns[f"{name}@{layout}"] = functools.partial(module, x)
    return fns


def time_rounds(
    fns: dict[str, Callable[[], Tensor]], threads: int, rounds: int, min_run_time: float
) -> dict[str, list[float]]:
    """Per-round median ms of every callable; each round times all of them back to back.

    Ratios are then taken within a round (paired), so a burst of load from other
    processes shifts both sides of most ratios alike instead of one side only.
    """
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    for index in range(rounds):
        measured = compare(
            fns, threads=threads, min_run_time=min_run_time, rounds=1,
            warmup=3 if index == 0 else 1,
        )
        for name, m in measured.items():
            per_round[name].append(m.median_ms)
    return per_round


def summarize(values: list[float]) -> tuple[float, float]:
    """`(median, interquartile range)`."""
    q25, q50, q75 = statistics.quantiles(values, n=4, method="inclusive")
    return q50, q75 - q25


def run(batch_sizes: list[int], threads: int, rounds: int, min_run_time: float) -> list[dict]:
    layers = build_layers()
    check_mixture_equivalence(layers)
    flops = per_sample_flops(layers)
    records = []
    for batch in batch_sizes:
        ms = time_rounds(make_callables(layers, batch), threads, rounds, min_run_time)
        static = {layout: ms[f"static@{layout}"] for layout in LAYOUTS}
        best_static = [min(pair) for pair in zip(*static.values())]
        for layout in LAYOUTS:
            for name in layers:
                if name == "static":
                    continue
                times = ms[f"{name}@{layout}"]
                overhead, overhead_iqr = summarize(
                    [t / s for t, s in zip(times, static[layout])]
                )
                records.append(
                    {
                        "layer": name,
                        "batch_size": batch,
                        "memory_format": layout,
                        "overhead": overhead,
                        "overhead_iqr": overhead_iqr,
                        "overhead_vs_best_static": summarize(
                            [t / s for t, s in zip(times, best_static)]
                        )[0],
                        "ms": summarize(times)[0],
                        "static_ms": summarize(static[layout])[0],
                        "flops": flops[name],
                        "static_flops": flops["static"],
                        "flops_ratio": flops[name] / flops["static"],
                        "rounds": rounds,
                    }
                )
        print(markdown_table([r for r in records if r["batch_size"] == batch], COLUMNS, ".3g"))
    return records


def print_profiles(batch_sizes: list[int], threads: int, top: int = 6) -> None:
    """Print, per batch size, layout and layer, the ops with the largest self-time share."""
    from torch.profiler import profile

    layers = build_layers()
    torch.set_num_threads(threads)
    for batch in batch_sizes:
        calls = 10 if batch > 1 else 200
        for name, fn in make_callables(layers, batch).items():
            with torch.inference_mode():
                for _ in range(3):
                    fn()
                with profile() as prof:
                    for _ in range(calls):
                        fn()
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
            shares = ", ".join(
                f"{e.key.removeprefix('aten::')} {e.self_cpu_time_total / total:.1%}"
                for e in ranked
            )
            print(f"profile batch {batch} {name} ({total / calls / 1e3:.3g} ms/call): {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batch-sizes", default="32,1", help="comma-separated")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument(
        "--min-run-time", type=float, default=0.1, help="seconds per callable per round"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "dynamic_params_overhead.json",
        help="JSON path; the Markdown table goes beside it (.md)",
    )
    parser.add_argument(
        "--profile", action="store_true",
        help="also print each layer's top ops by torch.profiler self-time share",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.profile:
        print_profiles(batch_sizes, args.threads)
    records = run(batch_sizes, args.threads, args.rounds, args.min_run_time)
    meta = {
        "threads": args.threads,
        "shape": f"{CHANNELS}->{CHANNELS} channels, {KERNEL}x{KERNEL}, {SIZE}x{SIZE}",
        "rounds": args.rounds,
        "min_run_time_s": args.min_run_time,
        "timed": "layer forward incl. routing and kernel aggregation; torch.inference_mode",
        "target_overhead": TARGET,
    }
    write_json(args.out, records, meta)
    formats = {
        "overhead": ".3f", "overhead_iqr": ".3f", "overhead_vs_best_static": ".3f",
        "ms": ".3g", "static_ms": ".3g", "flops_ratio": ".4f",
    }
    table = markdown_table(records, COLUMNS, formats)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
