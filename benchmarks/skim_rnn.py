"""Skim-RNN on MNIST read row by row: accuracy against big-cell reads, and what skimming saves.

Trains (same short schedule, same seed) the static `lstm_classifier` of the big size and
`skim_lstm_classifier` (big cell `--hidden`, small cell `--small-hidden`) at each skim
weight, on MNIST read as 28 steps of one 28-pixel row (the seeded validation split of the
training set, `--val-size` images, is the evaluation set: the data has no test split).
Then times on this CPU, in one run, at batch 256 and at batch 1 (`--singles` validation
images one after the other, each with its own decisions):

- `skim (compact)`: the trained Skim-RNN with its own decisions, compact execution (the
  read rows run the big cell, the skim rows the small one, at every step);
- `static cell loop`: `lstm_classifier`, the big cell at all 28 steps (the baseline).

`update_fraction` is the fraction of steps the big cell read; `speedup_flops` = static
FLOPs / Skim-RNN mean FLOPs (choice layer included); `speedup_measured` = static loop
time / skim time (`static_loop_ms`, `ms`), interleaved in the same run.

    OMP_NUM_THREADS=1 python benchmarks/skim_rnn.py                # trains, then times
    OMP_NUM_THREADS=1 python benchmarks/skim_rnn.py --time-only    # re-time finished runs

Writes benchmarks/results/skim_rnn.{json,md}; checkpoints in runs/bench/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer
from dynamicnets.training.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def config(name: str, model: str, model_args: dict, args) -> TrainConfig:
    return TrainConfig(name=name, model=model, model_args=model_args, data=args.data, val_size=args.val_size,
                       epochs=args.epochs, batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=0.01,
                       schedule="cosine", grad_clip=1.0, seed=0, device="cpu", out_dir=args.out_dir, resume=True,
                       threads=args.threads, progress=sys.stderr.isatty())


@torch.no_grad()
def time_pair(skim, static, xs: list[torch.Tensor], args) -> dict:
    """Time the calls on every tensor of `xs` in a row (one batch of 256, or single images)."""
    timed = compare({"static": lambda: [static(x) for x in xs], "skim": lambda: [skim(x) for x in xs]},
                    threads=args.threads, min_run_time=args.min_run_time, rounds=args.rounds)
    return {"speedup_measured": ratio(timed, "static", "skim"), "static_loop_ms": timed["static"].median_ms,
            "ms": timed["skim"].median_ms}


@torch.no_grad()
def time_static(static, xs: list[torch.Tensor], args) -> dict:
    """The baseline row: the static loop alone (speedup 1 by definition)."""
    timed = compare({"static": lambda: [static(x) for x in xs]}, threads=args.threads,
                    min_run_time=args.min_run_time, rounds=args.rounds)
    return {"speedup_measured": 1.0, "static_loop_ms": timed["static"].median_ms, "ms": timed["static"].median_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist:data/mnist", help="MNIST data spec (IDX folder)")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--small-hidden", type=int, default=16)
    parser.add_argument("--skim-weights", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=32, help="validation images timed one by one for batch 1")
    parser.add_argument("--mechanism-hidden", type=int, nargs="*", default=[128, 512],
                        help="big-cell sizes of the forced-choice rows (random weights, small cell hidden / 8)")
    parser.add_argument("--time-only", action="store_true", help="use finished runs, train nothing")
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows_args = {"hidden": args.hidden, "row_width": 28, "length": 28}
    runs = {"lstm": ("lstm_classifier", rows_args)}
    for weight in args.skim_weights:
        runs[f"skim_w{weight:g}"] = ("skim_lstm_classifier",
                                     {**rows_args, "small_hidden": args.small_hidden, "skim_weight": weight})
    paths = {}
    for key, (model, model_args) in runs.items():
        name = f"mnist_rows_{key}_h{args.hidden}_e{args.epochs}"
        if not args.time_only:
            Trainer(config(name, model, model_args, args)).fit()
        paths[key] = Path(args.out_dir) / name / "last.pt"
    bundle = load_data(args.data, val_size=args.val_size, seed=0, augment=False)
    val_loader = make_eval_loader(bundle.val, 256)
    x_batch = next(iter(val_loader))[0]
    static, _ = load_trained_model(paths["lstm"])
    static_metrics = evaluate(static, val_loader, "cpu")
    rows = []
    for key, path in paths.items():
        model, _ = load_trained_model(path)
        metrics = evaluate(model, val_loader, "cpu")
        with torch.no_grad():
            reads = torch.cat([model(x).decisions["gates"] for x, _ in val_loader]).mean().item() if key != "lstm" \
                else 1.0
        row = {"method": key, "hidden": args.hidden, "small_hidden": None if key == "lstm" else args.small_hidden,
               "accuracy": metrics["accuracy"], "update_fraction": reads, "mean_flops": metrics["mean_flops"],
               "speedup_flops": static_metrics["mean_flops"] / metrics["mean_flops"]}
        for batch in (256, 1):
            xs = [x_batch] if batch > 1 else [x_batch[i : i + 1] for i in range(args.singles)]
            timing = time_pair(model, static, xs, args) if key != "lstm" else time_static(static, xs, args)
            rows.append({**row, "batch_size": batch, **timing})
            print({k: rows[-1][k] for k in ("method", "batch_size", "accuracy", "update_fraction",
                                            "speedup_flops", "speedup_measured")}, flush=True)
    rows += mechanism_rows(args)
    meta = {"threads": args.threads,
            "data": f"MNIST rows (28 steps x 28 pixels), evaluated on the seeded validation split of "
                    f"{args.val_size} training images",
            "schedule": f"{args.epochs} epochs AdamW lr 3e-3 cosine, wd 0.01, batch 128, grad clip 1, seed 0; "
                        f"Gumbel-softmax temperature 0.5 (soft mixture)",
            "batch_1": f"{args.singles} validation images timed one after the other",
            "command": "python benchmarks/skim_rnn.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / "skim_rnn.json", rows, meta)
    columns = ("method", "batch_size", "accuracy", "update_fraction", "speedup_flops", "speedup_measured",
               "static_loop_ms", "ms")
    table = markdown_table([{c: r.get(c) for c in columns} for r in rows],
                           floatfmt={"accuracy": ".4f", "update_fraction": ".3f", "speedup_flops": ".2f",
                                     "speedup_measured": ".2f", "static_loop_ms": ".2f", "ms": ".2f"})
    (RESULTS / "skim_rnn.md").write_text(
        f"Schedule: {meta['schedule']}. Big cell {args.hidden}, small cell {args.small_hidden}; "
        f"{meta['data']}; batch 1 = {meta['batch_1']}; {args.threads} thread(s).\n\n{table}\n")
    print(table)
    return 0


@torch.no_grad()
def mechanism_rows(args) -> list[dict]:
    """Random-weight models at each big-cell size (small cell a size / 8), every sample
    reading a random half of the 28 rows (given as `choices`): compact vs the static loop."""
    from dynamicnets import create_model

    rows = []
    for hidden in args.mechanism_hidden:
        torch.manual_seed(0)
        shape = {"hidden": hidden, "row_width": 28, "length": 28}
        skim = create_model("skim_lstm_classifier", small_hidden=max(1, hidden // 8), **shape).eval()
        static = create_model("lstm_classifier", **shape).eval()
        for batch in (256, 1):
            x = torch.randn(batch, 1, 28, 28)
            order = torch.rand(batch, 28, generator=torch.Generator().manual_seed(1)).argsort(dim=1)
            choices = (order < 14).float()  # exactly 14 random rows read per sample
            timed = compare({"static": lambda: static(x), "skim": lambda: skim(x, choices=choices)},
                            threads=args.threads, min_run_time=args.min_run_time, rounds=args.rounds, warmup=1)
            rows.append({"method": f"forced_half_h{hidden}", "hidden": hidden, "small_hidden": max(1, hidden // 8),
                         "batch_size": batch, "accuracy": None, "update_fraction": 0.5,
                         "speedup_flops": static(x).flops.mean().item() / skim(x, choices=choices).flops.mean().item(),
                         "speedup_measured": ratio(timed, "static", "skim"),
                         "static_loop_ms": timed["static"].median_ms, "ms": timed["skim"].median_ms})
            print({k: rows[-1][k] for k in ("method", "batch_size", "speedup_flops", "speedup_measured")}, flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
