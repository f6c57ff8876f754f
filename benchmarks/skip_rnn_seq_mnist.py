"""Skip-RNN on sequential MNIST, row by row (28 steps) and pixel by pixel (784 steps).

Trains (one schedule per reading, seed 0, the Trainer) on MNIST's training set with a
seeded validation split, and scores the last checkpoint on that validation split:

- rows (`--row-epochs` full epochs): `lstm_classifier` (and `gru_classifier` with
  `--gru`), `skip_lstm_classifier` / `skip_gru_classifier` at each budget weight of
  `--row-budgets` / `--gru-budgets`;
- pixels (a much shorter schedule: `--pixel-steps` steps of `--pixel-batch-size`, scored on
  `--pixel-val-size` validation samples): `lstm_classifier` and `skip_lstm_classifier`
  at each budget weight of `--pixel-budgets`.

Hidden size 110 as in Skip-RNN (Campos et al., ICLR 2018). Then times every model on this
CPU (threads fixed, compact execution) at batch 256 (one validation batch) and batch 1
(`--singles` / `--pixel-singles` validation samples one after the other, each with its own
decisions), against
the static cell loop of the same cell type with the same weights (`static_loop_ms`), in
the same interleaved run. `speedup_measured` = static loop time / model time;
`speedup_flops` = static loop FLOPs / the model's mean FLOPs on the timed samples (update
gate included); `update_fraction` = the fraction of state updates on the validation set.

    python benchmarks/skip_rnn_seq_mnist.py --no-time      # train + score (~10 min on an idle core)
    python benchmarks/skip_rnn_seq_mnist.py --time-only    # time the finished runs (scores cached)

Writes benchmarks/results/skip_rnn_seq_mnist.{json,md} after every run (partial results
carry no timing until the timing pass); checkpoints in runs/bench/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dynamicnets import create_model
from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NAME = "skip_rnn_seq_mnist"
STATIC = {"lstm_classifier": "lstm_classifier", "skip_lstm_classifier": "lstm_classifier",
          "gru_classifier": "gru_classifier", "skip_gru_classifier": "gru_classifier"}
SHORT = {"lstm_classifier": "lstm", "gru_classifier": "gru", "skip_lstm_classifier": "skip_lstm",
         "skip_gru_classifier": "skip_gru"}


def schedule(reading: str, args) -> dict:
    rows = reading == "rows"
    return {"epochs": args.row_epochs if rows else args.pixel_epochs,
            "batch_size": args.batch_size if rows else args.pixel_batch_size,
            "max_steps_per_epoch": args.max_steps_per_epoch if rows else args.pixel_steps,
            "optimizer": "adamw", "lr": args.lr, "weight_decay": 0.01, "schedule": "cosine", "grad_clip": 1.0,
            "seed": 0}


def schedule_text(reading: str, args) -> str:
    s = schedule(reading, args)
    cap = s["max_steps_per_epoch"]
    cap = "" if cap is None else f" of {cap} steps ({cap * s['batch_size']:,} samples)"
    epochs = f"{s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}"
    return (f"{epochs}{cap}, AdamW lr {s['lr']:g} cosine, wd 0.01, batch {s['batch_size']}, "
            "grad clip 1, seed 0")


def planned_runs(args) -> list[dict]:
    """One dict per run: key, model, model_args, reading, budget_weight."""
    runs = []

    def add(model: str, reading: str, budget: float | None) -> None:
        model_args = {"hidden": args.hidden, "row_width": 28, "length": 28, "reading": reading}
        key = f"{reading}_{SHORT[model]}"
        if budget is not None:
            model_args["budget_weight"] = budget
            key += f"_b{budget:g}"
        runs.append({"key": key, "model": model, "model_args": model_args, "reading": reading,
                     "budget_weight": budget})

    if "rows" in args.readings:
        add("lstm_classifier", "rows", None)
        if args.gru:
            add("gru_classifier", "rows", None)
        for budget in args.row_budgets:
            add("skip_lstm_classifier", "rows", budget)
        for budget in args.gru_budgets:
            add("skip_gru_classifier", "rows", budget)
    if "pixels" in args.readings:
        add("lstm_classifier", "pixels", None)
        for budget in args.pixel_budgets:
            add("skip_lstm_classifier", "pixels", budget)
    return runs


def run_name(run: dict, args) -> str:
    s = schedule(run["reading"], args)
    cap = "" if s["max_steps_per_epoch"] is None else f"s{s['max_steps_per_epoch']}"
    return f"seqmnist_{run['key']}_h{args.hidden}_e{s['epochs']}{cap}_b{s['batch_size']}"


def val_size(reading: str, args) -> float | int:
    return args.val_size if reading == "rows" else args.pixel_val_size


def train(run: dict, args) -> None:
    cfg = TrainConfig(name=run_name(run, args), model=run["model"], model_args=run["model_args"], data=args.data,
                      val_size=val_size(run["reading"], args), device="cpu", out_dir=args.out_dir, resume=True,
                      threads=args.threads, progress=sys.stderr.isatty(), **schedule(run["reading"], args))
    Trainer(cfg).fit()


@torch.no_grad()
def score(model, loader) -> dict:
    """Validation accuracy, mean FLOPs and the fraction of state updates (compact execution)."""
    model.eval()
    correct = count = 0
    flops = updates = 0.0
    for x, y in loader:
        out = model(x)
        correct += int((out.logits.argmax(dim=1) == y).sum())
        count += y.numel()
        flops += float(out.flops.double().sum())
        gates = out.decisions.get("gates")
        updates += float(gates.mean(dim=1).sum()) if gates is not None else float(y.numel())
    return {"accuracy": correct / count, "mean_flops": flops / count, "update_fraction": updates / count}


def cached_score(model, loader, checkpoint: Path) -> dict:
    """`score`, kept next to the checkpoint and reused while the checkpoint is unchanged."""
    cache = checkpoint.with_name("seq_mnist_score.json")
    if cache.exists() and cache.stat().st_mtime >= checkpoint.stat().st_mtime:
        return json.loads(cache.read_text())
    scores = score(model, loader)
    cache.write_text(json.dumps(scores))
    return scores


def static_twin(model, run: dict):
    """The static cell loop of `model`'s cell type, holding `model`'s cell and head weights."""
    static_name = STATIC[run["model"]]
    args = {k: v for k, v in run["model_args"].items() if k != "budget_weight"}
    static = create_model(static_name, **args).eval()
    if static_name != run["model"]:
        static.cell.load_state_dict(model.rnn.cell.state_dict())
        static.head.load_state_dict(model.head.state_dict())
    else:
        static.load_state_dict(model.state_dict())
    return static


@torch.no_grad()
def time_model(model, run: dict, xs: list[torch.Tensor], args) -> dict:
    """Time `model` (compact) against its static twin on every tensor of `xs` in a row."""
    static = static_twin(model, run)
    flops = torch.cat([model(x).flops for x in xs]).double().mean().item()
    static_flops = torch.cat([static(x).flops for x in xs]).double().mean().item()
    fns = {"model": lambda: [model(x) for x in xs], "static": lambda: [static(x) for x in xs]}
    timed = compare(fns, threads=args.threads, min_run_time=args.min_run_time, rounds=args.rounds)
    calls = len(xs)
    return {"speedup_flops": static_flops / flops, "speedup_measured": ratio(timed, "static", "model"),
            "ms": timed["model"].median_ms / calls, "static_loop_ms": timed["static"].median_ms / calls,
            "timed_mean_flops": flops, "timed_calls": calls}


def meta(args) -> dict:
    return {"threads": args.threads,
            "data": f"{args.data}, seeded validation split (seed 0): rows {args.val_size} of the training set, "
                    f"pixels {args.pixel_val_size} samples",
            "hidden": args.hidden,
            "schedule_rows": schedule_text("rows", args), "schedule_pixels": schedule_text("pixels", args),
            "timing": "compact execution, torch.utils.benchmark interleaved with the static cell loop; "
                      "ms and static_loop_ms are per call (batch 1: per sample)",
            "command": "python benchmarks/skip_rnn_seq_mnist.py " + " ".join(sys.argv[1:])}


def write(rows: list[dict], args) -> None:
    write_json(RESULTS / f"{NAME}.json", rows, meta(args))
    columns = ("reading", "method", "budget_weight", "batch_size", "accuracy", "update_fraction", "mean_flops",
               "speedup_flops", "speedup_measured", "ms", "static_loop_ms")
    table = markdown_table([{c: r.get(c) for c in columns} for r in rows],
                           floatfmt={"accuracy": ".4f", "update_fraction": ".3f", "mean_flops": ".3g",
                                     "speedup_flops": ".2f", "speedup_measured": ".2f", "ms": ".3g",
                                     "static_loop_ms": ".3g", "budget_weight": "g"})
    text = (f"MNIST, seeded validation split (seed 0; rows: {args.val_size} of the training set, pixels: "
            f"{args.pixel_val_size} samples), hidden {args.hidden}.\n"
            f"Rows (28 steps): {schedule_text('rows', args)}.\n"
            f"Pixels (784 steps): {schedule_text('pixels', args)}.\n"
            f"Timing: threads={args.threads}, compact execution; ms per call (batch 1: per sample), "
            "speedups against the static cell loop with the same weights, timed in the same run.\n\n"
            f"{table}\n")
    (RESULTS / f"{NAME}.md").write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist:data/mnist")
    parser.add_argument("--val-size", type=float, default=0.1, help="validation fraction (rows)")
    parser.add_argument("--pixel-val-size", type=int, default=1000, help="validation samples (pixels)")
    parser.add_argument("--hidden", type=int, default=110)
    parser.add_argument("--readings", nargs="+", default=["rows", "pixels"], choices=["rows", "pixels"])
    parser.add_argument("--row-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (rows)")
    parser.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap on steps per epoch (rows)")
    parser.add_argument("--pixel-epochs", type=int, default=1)
    parser.add_argument("--pixel-batch-size", type=int, default=64)
    parser.add_argument("--pixel-steps", type=int, default=50, help="cap on steps per epoch (pixels)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--row-budgets", type=float, nargs="*", default=[1e-3, 3e-3, 1e-2, 3e-2])
    parser.add_argument("--gru-budgets", type=float, nargs="*", default=[3e-3, 1e-2, 3e-2])
    parser.add_argument("--pixel-budgets", type=float, nargs="*", default=[1e-4, 4e-4])
    parser.add_argument("--gru", action="store_true", help="train the static GRU baseline too (rows)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=16, help="validation samples timed one by one (batch 1)")
    parser.add_argument("--pixel-singles", type=int, default=4, help="the same for the pixel reading")
    parser.add_argument("--time-only", action="store_true", help="use finished runs, train nothing")
    parser.add_argument("--no-time", action="store_true", help="train and score, time nothing")
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = planned_runs(args)
    vals = {reading: load_data(args.data, val_size=val_size(reading, args), seed=0, augment=False).val
            for reading in args.readings}
    rows = []
    for run in runs:
        path = Path(args.out_dir) / run_name(run, args) / "last.pt"
        if not args.time_only:
            train(run, args)
        if not path.exists():
            print(f"skipping {run['key']}: no {path}", flush=True)
            continue
        model, _ = load_trained_model(path)
        loader = make_eval_loader(vals[run["reading"]], 256)
        x_batch = next(iter(loader))[0]
        record = {"reading": run["reading"], "method": SHORT[run["model"]] + _suffix(run), "model": run["model"],
                  "budget_weight": run["budget_weight"], "hidden": args.hidden,
                  "steps": 28 if run["reading"] == "rows" else 784, **cached_score(model, loader, path)}
        print(record, flush=True)
        for batch in (256, 1):
            singles = args.singles if run["reading"] == "rows" else args.pixel_singles
            row = {**record, "batch_size": min(batch, x_batch.shape[0])}
            if not args.no_time:
                xs = [x_batch] if batch > 1 else [x_batch[i : i + 1] for i in range(singles)]
                row.update(time_model(model, run, xs, args))
            rows.append(row)
            print({k: row.get(k) for k in ("reading", "method", "batch_size", "accuracy", "update_fraction",
                                           "speedup_flops", "speedup_measured")}, flush=True)
        write(rows, args)
    print((RESULTS / f"{NAME}.md").read_text())
    return 0


def _suffix(run: dict) -> str:
    return "" if run["budget_weight"] is None else f"_b{run['budget_weight']:g}"


if __name__ == "__main__":
    raise SystemExit(main())
