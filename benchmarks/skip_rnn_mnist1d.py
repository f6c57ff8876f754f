"""Skip-RNN on MNIST-1D: accuracy against state updates, and what skipping saves in time.

Trains (same schedule, same seed) the static `lstm_classifier` and `skip_lstm_classifier`
for each budget weight on MNIST-1D read as 40 steps of one value (3,600 train / 400 val,
scored on the 1,000-sample test split), then times on this CPU, at batch 256 and batch 1
(`--singles` test samples one after the other, each with its own decisions):

- `skip (compact)`: the trained Skip-RNN with its own decisions, compact execution;
- `static cell loop`: `lstm_classifier`, the same cell at all 40 steps (the FLOPs baseline);
- `fused nn.LSTM`: PyTorch's one-call LSTM over all 40 steps with the same weights (what a
  user would deploy instead: no per-step Python);
- `ideal`: the static cell loop over exactly the mean number of executed steps.

Then the mechanism alone, at the hidden sizes of `--mechanism-hidden` (random weights):
every sample updates at a random half of the steps (given as `updates`), compact against
the static cell loop and the ideal 20-step loop -- where the per-step bookkeeping of
compact execution (a gather and write-back per step, the update gate) stops mattering.

`speedup_measured` = static cell loop time ÷ skip time; `speedup_flops` = static FLOPs ÷
skip mean FLOPs (update gate included). Timings are same-run interleaved ratios.

    OMP_NUM_THREADS=2 python benchmarks/skip_rnn_mnist1d.py               # ~5 min here
    OMP_NUM_THREADS=2 python benchmarks/skip_rnn_mnist1d.py --time-only   # re-time finished runs

Writes benchmarks/results/skip_rnn_mnist1d.{json,md}; checkpoints in runs/bench/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.profiling.fused_rnn import fused_rnn
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer
from dynamicnets.training.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def config(name: str, model: str, model_args: dict, args) -> TrainConfig:
    return TrainConfig(name=name, model=model, model_args=model_args, data="mnist1d", val_size=0.1,
                       epochs=args.epochs, batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=0.01,
                       schedule="cosine", grad_clip=1.0, seed=0, device="cpu", out_dir=args.out_dir, resume=True,
                       threads=args.threads, progress=sys.stderr.isatty())


def fused_forward(lstm, head, x: torch.Tensor) -> torch.Tensor:
    out, _ = lstm(x.transpose(1, 2))
    return head(out[:, -1])


@torch.no_grad()
def time_pair(skip, static, xs: list[torch.Tensor], args) -> dict:
    """Time the calls on every tensor of `xs` in a row (a batch of 256, or 32 single samples,
    whose own decisions differ)."""
    steps = xs[0].shape[-1]
    executed = float(torch.cat([skip(x).decisions["gates"] for x in xs]).sum(dim=1).mean())
    k = max(1, round(executed))
    lstm = fused_rnn(static.cell)
    fns = {
        "skip": lambda: [skip(x) for x in xs],
        "static": lambda: [static(x) for x in xs],
        "fused": lambda: [fused_forward(lstm, static.head, x) for x in xs],
        "ideal": lambda: [static(x[..., :k]) for x in xs],
    }
    timed = compare(fns, threads=args.threads, min_run_time=args.min_run_time, rounds=args.rounds)
    return {"executed_steps": executed, "ideal_steps": k, "total_steps": steps,
            "speedup_measured": ratio(timed, "static", "skip"),
            "fused_over_static_time": timed["fused"].median_ms / timed["static"].median_ms,
            "skip_over_fused_time": timed["skip"].median_ms / timed["fused"].median_ms,
            "ideal_speedup": ratio(timed, "static", "ideal"),
            "skip_ms": timed["skip"].median_ms, "static_ms": timed["static"].median_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.0, 1e-3, 2e-3, 4e-3, 1e-2])
    parser.add_argument("--mechanism-hidden", type=int, nargs="*", default=[64, 256, 1024])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=32, help="test samples timed one by one for batch 1")
    parser.add_argument("--time-only", action="store_true", help="use finished runs, train nothing")
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = {"lstm": ("lstm_classifier", {"hidden": args.hidden})}
    for budget in args.budgets:
        runs[f"skip_b{budget:g}"] = ("skip_lstm_classifier", {"hidden": args.hidden, "budget_weight": budget})
    paths = {}
    for key, (model, model_args) in runs.items():
        name = f"mnist1d_{key}_h{args.hidden}_e{args.epochs}"
        if not args.time_only:
            Trainer(config(name, model, model_args, args)).fit()
        paths[key] = Path(args.out_dir) / name / "last.pt"
    bundle = load_data("mnist1d", val_size=0.1, seed=0, augment=False)
    test_loader = make_eval_loader(bundle.test, 256)
    x_batch = next(iter(make_eval_loader(bundle.test, 256)))[0]
    static, _ = load_trained_model(paths["lstm"])
    static_metrics = evaluate(static, test_loader, "cpu")
    rows = []
    for key, path in paths.items():
        model, _ = load_trained_model(path)
        metrics = evaluate(model, test_loader, "cpu")
        row = {"method": key, "accuracy": metrics["accuracy"], "mean_flops": metrics["mean_flops"],
               "speedup_flops": static_metrics["mean_flops"] / metrics["mean_flops"],
               "accuracy_drop_vs_static": static_metrics["accuracy"] - metrics["accuracy"]}
        for batch in (256, 1):
            if key == "lstm" and batch == 1:
                continue
            xs = [x_batch] if batch > 1 else [x_batch[i : i + 1] for i in range(args.singles)]
            timing = time_pair(model, static, xs, args) if key != "lstm" else time_pair_static(static, xs[0], args)
            rows.append({**row, "batch_size": batch, **timing,
                         "executed_fraction": timing["executed_steps"] / timing["total_steps"]})
            print({k: rows[-1][k] for k in ("method", "batch_size", "accuracy", "executed_fraction",
                                            "speedup_flops", "speedup_measured")}, flush=True)
    rows += mechanism_rows(args)
    meta = {"threads": args.threads, "data": "mnist1d (generated locally), test split 1,000 samples",
            "schedule": f"{args.epochs} epochs AdamW lr 3e-3 cosine, wd 0.01, batch 128, grad clip 1, seed 0",
            "command": "python benchmarks/skip_rnn_mnist1d.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / "skip_rnn_mnist1d.json", rows, meta)
    columns = ("method", "batch_size", "accuracy", "executed_steps", "speedup_flops", "speedup_measured",
               "ideal_speedup", "skip_over_fused_time", "fused_over_static_time")
    table = markdown_table([{c: r.get(c) for c in columns} for r in rows],
                           floatfmt={"accuracy": ".4f", "executed_steps": ".1f", "speedup_flops": ".2f",
                                     "speedup_measured": ".2f", "ideal_speedup": ".2f",
                                     "skip_over_fused_time": ".2f", "fused_over_static_time": ".2f"})
    (RESULTS / "skip_rnn_mnist1d.md").write_text(f"Schedule: {meta['schedule']}.\n\n{table}\n")
    print(table)
    return 0


@torch.no_grad()
def time_pair_static(static, x: torch.Tensor, args) -> dict:
    """The static row: its own time against the fused LSTM (no skipping: speedups 1)."""
    lstm = fused_rnn(static.cell)
    timed = compare({"static": lambda: static(x), "fused": lambda: fused_forward(lstm, static.head, x)},
                    threads=args.threads, min_run_time=args.min_run_time, rounds=args.rounds)
    steps = x.shape[-1]
    return {"executed_steps": float(steps), "ideal_steps": steps, "total_steps": steps, "speedup_measured": 1.0,
            "fused_over_static_time": timed["fused"].median_ms / timed["static"].median_ms,
            "skip_over_fused_time": None, "ideal_speedup": 1.0,
            "skip_ms": None, "static_ms": timed["static"].median_ms}


@torch.no_grad()
def mechanism_rows(args) -> list[dict]:
    """Random-weight models at each hidden size, every sample updating at a random half of
    the 40 steps: compact vs the static loop vs the ideal 20-step loop."""
    from dynamicnets import create_model

    rows = []
    for hidden in args.mechanism_hidden:
        torch.manual_seed(0)
        skip = create_model("skip_lstm_classifier", hidden=hidden).eval()
        static = create_model("lstm_classifier", hidden=hidden).eval()
        static.cell.load_state_dict(skip.rnn.cell.state_dict())
        static.head.load_state_dict(skip.head.state_dict())
        for batch in (256, 1):
            x = torch.randn(batch, 1, 40)
            order = torch.rand(batch, 40, generator=torch.Generator().manual_seed(1)).argsort(dim=1)
            updates = (order < 20).float()  # exactly 20 random steps per sample
            flops = skip(x, updates=updates).flops.mean().item()
            timed = compare({"skip": lambda: skip(x, updates=updates), "static": lambda: static(x),
                             "ideal": lambda: static(x[..., :20])},
                            threads=args.threads, min_run_time=args.min_run_time, rounds=args.rounds)
            rows.append({"method": f"forced_half_h{hidden}", "batch_size": batch, "accuracy": None,
                         "executed_steps": 20.0, "total_steps": 40, "executed_fraction": 0.5,
                         "speedup_flops": static(x).flops.mean().item() / flops,
                         "speedup_measured": ratio(timed, "static", "skip"),
                         "ideal_speedup": ratio(timed, "static", "ideal"),
                         "skip_ms": timed["skip"].median_ms, "static_ms": timed["static"].median_ms})
            print({k: rows[-1][k] for k in ("method", "batch_size", "speedup_flops", "speedup_measured",
                                            "ideal_speedup")}, flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
