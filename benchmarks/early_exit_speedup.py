"""Real speedup of the compact early-exit executor.

For thresholds that cut mean FLOPs by 2x and by 3x, times the compact executor (samples
that exit leave the batch) against the full network on the same inputs, in the same run
(interleaved rounds, fixed threads), at batch 256 and at batch 1 (48 single samples in a
row), and reports measured speedup ÷ FLOPs speedup. An "ideal" is timed too: the same
stages run statically on contiguous sub-batches of exactly the sizes the executor
produced (no criterion, no gather), so compact ÷ ideal isolates the executor's own
overhead from the per-FLOP speed of the stages it skips.

    python benchmarks/early_exit_speedup.py                # MSDNet + ResNet-20 with exits
    python benchmarks/early_exit_speedup.py --channels-last

Uses the MSDNet trained by early_exit_budgeted.py when runs/bench holds it and real CIFAR-10
validation images when data/cifar-10-batches-py holds them; otherwise random weights (logits spread so
that confidences vary) and random inputs, which is stated in each record.
Writes benchmarks/results/early_exit_speedup.{json,md}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from dynamicnets import create_model
from dynamicnets.data import load_data
from dynamicnets.errors import ConfigError
from dynamicnets.inference import calibrate_thresholds, run_early_exit
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.pipelines.early_exit import split_for_calibration
from dynamicnets.profiling.latency import compare
from dynamicnets.profiling.report import markdown_table, write_json

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "data" / "cifar-10-batches-py"
TRAINED = {"msdnet_cifar": ROOT / "runs" / "bench" / "cifar10_msdnet_cifar" / "last.pt"}


def build(name: str, args: dict) -> tuple[nn.Module, str]:
    path = TRAINED.get(name)
    if path is not None and path.is_file():
        return load_trained_model(path)[0], f"trained ({path.relative_to(ROOT)})"
    torch.manual_seed(0)
    model = create_model(name, **args).eval()
    with torch.no_grad():  # random weights give near-uniform softmax; spread it
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(30.0)
    return model, "random weights"


def inputs(shape, count: int):
    if CIFAR.is_dir() and tuple(shape) == (3, 32, 32):
        bundle = load_data(f"cifar10:{CIFAR}", val_size=5000, seed=0, augment=False)
        calibration, evaluation = split_for_calibration(bundle.val, seed=0)
        take = lambda ds, n: torch.stack([ds[i][0] for i in range(n)])  # noqa: E731
        labels = torch.tensor([int(evaluation[i][1]) for i in range(256 + 48)])
        return take(calibration, count), take(evaluation, 256 + 48), labels, "CIFAR-10 validation images"
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(count, *shape, generator=gen), torch.randn(256 + 48, *shape, generator=gen), None,
            "random inputs")


def static_segments(model, x, last: int) -> None:
    state = None
    for k in range(last + 1):
        state = model.run_segment(k, state, x)
        model.exit_logits(k, state)


def ideal_runner(model, x, exit_index):
    counts = torch.bincount(exit_index, minlength=model.num_exits).tolist()
    running = [x.shape[0] - sum(counts[:k]) for k in range(model.num_exits)]

    def run():
        state = None
        for k in range(model.num_exits):
            if running[k] == 0:
                break
            if state is not None and running[k] < running[k - 1]:
                state = [s[: running[k]] for s in state] if isinstance(state, list) else state[: running[k]]
            state = model.run_segment(k, state, x[: running[k]])
            model.exit_logits(k, state)
    return run


def bench_model(name, args, channels_last: bool, threads: int, rounds: int, min_run_time: float) -> list[dict]:
    model, weights = build(name, args)
    shape = model.default_input_shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    calib, evaluation, labels, source = inputs(shape, 1024)
    calib = calib.contiguous(memory_format=fmt)
    x256 = evaluation[:256].contiguous(memory_format=fmt)
    singles = [s.unsqueeze(0).contiguous(memory_format=fmt) for s in evaluation[256:]]
    costs = model.exit_costs(shape)
    with torch.no_grad():
        calib_logits = model(calib).exit_logits
    rows = []
    for factor in (2, 3):
        try:
            cal = calibrate_thresholds(calib_logits, torch.zeros(len(calib), dtype=torch.long), costs,
                                       costs[-1] / factor)
        except ConfigError as e:
            print(f"# {name}: a {factor}x FLOPs cut is not attainable: {e}")
            continue
        policy = cal.policy
        with torch.inference_mode():
            r256 = run_early_exit(model, x256, policy, costs=costs)
            r1 = [run_early_exit(model, s, policy, costs=costs) for s in singles]
        exits1 = [int(r.exit_index) for r in r1]
        fns = {
            "full_256": lambda: model(x256),
            "compact_256": lambda: run_early_exit(model, x256, policy, costs=costs),
            "ideal_256": ideal_runner(model, x256, r256.exit_index),
            "full_1": lambda: [model(s) for s in singles],
            "compact_1": lambda: [run_early_exit(model, s, policy, costs=costs) for s in singles],
            "ideal_1": lambda: [static_segments(model, s, e) for s, e in zip(singles, exits1)],
        }
        timed = compare(fns, threads=threads, min_run_time=min_run_time, rounds=rounds)
        predictions = {256: r256.predictions, 1: torch.cat([r.predictions for r in r1])}
        for batch, flops in ((256, r256.flops.mean().item()), (1, sum(costs[e] for e in exits1) / len(exits1))):
            truth = None if labels is None else (labels[:256] if batch == 256 else labels[256:])
            accuracy = None if truth is None or weights == "random weights" else \
                float((predictions[batch] == truth).double().mean())
            speedup_flops = costs[-1] / flops
            measured = timed[f"full_{batch}"].median_ms / timed[f"compact_{batch}"].median_ms
            ideal = timed[f"full_{batch}"].median_ms / timed[f"ideal_{batch}"].median_ms
            rows.append({
                "model": name, "weights": weights, "inputs": source, "channels_last": channels_last,
                "policy": "maxprob", "budget": f"{factor}x FLOPs cut", "thresholds": policy.thresholds,
                "batch_size": batch, "mean_flops": flops, "full_flops": costs[-1], "accuracy": accuracy,
                "speedup_flops": speedup_flops, "speedup_measured": measured,
                "measured_over_flops": measured / speedup_flops, "ideal_over_flops": ideal / speedup_flops,
                "compact_over_ideal": timed[f"compact_{batch}"].median_ms / timed[f"ideal_{batch}"].median_ms,
                "full_ms": timed[f"full_{batch}"].median_ms, "compact_ms": timed[f"compact_{batch}"].median_ms,
                "threads": threads,
            })
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()
                   if k not in ("thresholds", "inputs", "weights")}, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    rows = []
    for name, kwargs in (("msdnet_cifar", {}), ("resnet_exits", {"depth": 20})):
        rows += bench_model(name, kwargs, args.channels_last, args.threads, args.rounds, args.min_run_time)
    suffix = "_channels_last" if args.channels_last else ""
    out = ROOT / "benchmarks" / "results"
    command = "python benchmarks/early_exit_speedup.py" + (" --channels-last" if args.channels_last else "")
    write_json(out / f"early_exit_speedup{suffix}.json", rows, {"threads": args.threads, "command": command})
    columns = ["model", "budget", "batch_size", "accuracy", "speedup_flops", "speedup_measured", "measured_over_flops",
               "ideal_over_flops", "compact_over_ideal", "weights"]
    table = markdown_table(rows, columns, floatfmt=".3f")
    (out / f"early_exit_speedup{suffix}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
