"""Early stopping over time on MNIST read row by row: stop reading once the digit is clear.

Trains, with the same schedule and seed (the Trainer; MNIST's training set with a seeded
55k/5k validation split), the static `lstm_classifier` and `early_stop_lstm_classifier`
(a check after every row, `halting=True`: the head at every row trained by the multi-exit
loss, plus the learned halting unit), once per halting price of `--cost-weights`. The validation split is cut into two seeded halves:
thresholds are fitted on one (`calibration`) and everything is scored on the other.

Rows (all from the same trained early-stop model):

- `static`: the static LSTM (the FLOPs and time baseline);
- `no_stop`: the first early-stop model told to read every row (`stops` = the last check):
  its last head's accuracy and the compact executor's overhead when nobody stops;
- `maxprob@B`: max-probability criterion on the first early-stop model, thresholds
  calibrated (`calibrate`) for a mean budget of `B` x the static LSTM's FLOPs, run by
  `run_early_exit`;
- `halting(c=W)@t`: the learned halting unit of the model trained with cost weight `W`,
  stop where its probability exceeds `t`.

Each is timed on this CPU (threads fixed, interleaved rounds) at batch 256 (one batch of
the scored half) and batch 1 (`--singles` samples one after the other, each with its own
decisions) against the static LSTM's step loop on the same inputs (`static_loop_ms`) and an
`ideal` static loop over exactly the mean rows read, in the same run. `speedup_flops` =
static FLOPs / mean FLOPs (heads and halting unit included) on the timed samples;
`speedup_measured` = static loop time / time; `update_fraction` = mean fraction of the
rows read over the scored half. `ms` and `static_loop_ms` are per call: a batch of 256, or
one sample.

    python benchmarks/early_stop_rnn.py              # 3 trainings of 4-8 min each on one core, ~6 min timing
    python benchmarks/early_stop_rnn.py --time-only  # re-score and re-time the finished runs

Writes benchmarks/results/early_stop_rnn.{json,md}; checkpoints in runs/bench/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.inference import calibrate
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.pipelines.early_exit import split_for_calibration
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NAME = "early_stop_rnn"
DATA = "mnist:" + str(ROOT / "data" / "mnist")
ROWS = 28


def train_config(name: str, model: str, model_args: dict, args) -> TrainConfig:
    # later checks weigh more (linear in the rows read): the last one matters most
    weights = [float(k + 1) for k in range(ROWS)] if model == "early_stop_lstm_classifier" else None
    return TrainConfig(name=name, model=model, model_args=model_args, data=args.data, val_size=5000,
                       epochs=args.epochs, batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=0.01,
                       schedule="cosine", grad_clip=1.0, seed=0, device="cpu", out_dir=args.out_dir, resume=True,
                       threads=args.threads, progress=sys.stderr.isatty(), exit_weights=weights,
                       max_steps_per_epoch=args.max_steps)


def schedule_text(args) -> str:
    return (f"{args.epochs} epochs, AdamW lr 3e-3 cosine, weight decay 0.01, batch 128, grad clip 1, seed 0, "
            f"hidden {args.hidden}; early-stop: a check after every row, exit weights linear in the rows read "
            f"(k + 1), halting cost_weight {' and '.join(f'{w:g}' for w in args.cost_weights)} (one model each)")


def with_inputs(kwargs: dict, x: torch.Tensor) -> dict:
    """`kwargs` for a call on `x`: `stops="last"` becomes every sample stopping at the last check."""
    if kwargs.get("stops") != "last":
        return kwargs
    return {**kwargs, "stops": torch.full((x.shape[0],), ROWS - 1, dtype=torch.int64)}


def tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    loader = make_eval_loader(dataset, 512)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def score(model, x: torch.Tensor, y: torch.Tensor, kwargs: dict) -> dict:
    outs = [model(x[i:i + 500], **with_inputs(kwargs, x[i:i + 500])) for i in range(0, x.shape[0], 500)]
    logits = torch.cat([o.logits for o in outs])
    flops = torch.cat([o.flops for o in outs])
    fraction = torch.cat([o.decisions["executed_fraction"] for o in outs]) if "executed_fraction" in outs[0].decisions \
        else torch.ones(x.shape[0], dtype=torch.float64)
    return {"accuracy": float((logits.argmax(1) == y).double().mean()), "mean_flops": float(flops.mean()),
            "update_fraction": float(fraction.mean())}


@torch.no_grad()
def timing(model, static, kwargs: dict, xs: list[torch.Tensor], args) -> dict:
    """Time the calls on every tensor of `xs` in a row, against the static loop and the
    ideal static loop over the mean rows read (same run)."""
    calls = [with_inputs(kwargs, x) for x in xs]
    outs = [model(x, **c) for x, c in zip(xs, calls)]
    flops = float(torch.cat([o.flops for o in outs]).mean())
    steps = float(torch.cat([o.decisions.get("steps_read", torch.full((x.shape[0],), float(ROWS), dtype=torch.float64))
                             for o, x in zip(outs, xs)]).mean())
    k = max(1, round(steps))
    fns = {"model": lambda: [model(x, **c) for x, c in zip(xs, calls)], "static": lambda: [static(x) for x in xs],
           "ideal": lambda: [static(x[:, :, :k]) for x in xs]}
    timed = compare(fns, threads=args.threads, min_run_time=args.min_run_time, rounds=args.rounds)
    static_flops = float(static(xs[0][:1]).flops[0])
    return {"timed_mean_flops": flops, "timed_steps": steps, "speedup_flops": static_flops / flops,
            "speedup_measured": ratio(timed, "static", "model"), "ideal_steps": k,
            "ideal_speedup": ratio(timed, "static", "ideal"), "ms": timed["model"].median_ms / len(xs),
            "static_loop_ms": timed["static"].median_ms / len(xs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA, help="MNIST spec, mnist:DIR (IDX files)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--cost-weights", type=float, nargs="+", default=[0.5, 1.0],
                        help="halting unit's price of a full read, one early-stop model each (the first also "
                             "gives the max-probability rows)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.55, 0.7, 0.85],
                        help="mean-FLOPs budgets for max-probability stopping, fractions of the static LSTM")
    parser.add_argument("--halting-thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=32, help="samples timed one by one for batch 1")
    parser.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps per epoch (smoke runs)")
    parser.add_argument("--time-only", action="store_true", help="use finished runs, train nothing")
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = {"hidden": args.hidden, "row_width": ROWS, "length": ROWS}
    runs = {"static": ("lstm_classifier", common)}
    for weight in args.cost_weights:
        runs[f"early_stop_c{weight:g}"] = ("early_stop_lstm_classifier",
                                           {**common, "halting": True, "cost_weight": weight})
    paths = {}
    for key, (model_name, model_args) in runs.items():
        name = f"mnist_rows_{key}_h{args.hidden}_e{args.epochs}"
        if not args.time_only:
            Trainer(train_config(name, model_name, model_args, args)).fit()
        paths[key] = Path(args.out_dir) / name / "last.pt"

    bundle = load_data(args.data, val_size=5000, seed=0, augment=False)
    calibration, evaluation = split_for_calibration(bundle.val, seed=0)
    x_cal, y_cal = tensors(calibration)
    x_eval, y_eval = tensors(evaluation)
    static, _ = load_trained_model(paths["static"])
    models = {w: load_trained_model(paths[f"early_stop_c{w:g}"])[0].eval() for w in args.cost_weights}
    model = models[args.cost_weights[0]]
    static = static.eval()
    static_flops = float(static(x_eval[:1]).flops[0])

    cases = [("static", static, None, {}), ("no_stop", model, None, {"stops": "last"})]
    for fraction in args.budgets:
        fit = calibrate(model, [(x_cal[i:i + 500], y_cal[i:i + 500]) for i in range(0, len(x_cal), 500)],
                        fraction * static_flops)
        cases.append((f"maxprob@{fraction:g}", model, fit, {"policy": fit.policy}))
    for weight, net in models.items():
        for threshold in args.halting_thresholds:
            cases.append((f"halting(c={weight:g})@{threshold:g}", net, None, {"policy": net.halting_policy(threshold)}))

    rows = []
    for method, net, fit, kwargs in cases:
        for batch in (256, 1):
            xs = [x_eval[:256]] if batch > 1 else [x_eval[i:i + 1] for i in range(args.singles)]
            scored = score(net, x_eval, y_eval, kwargs)
            row = {"method": method, "hidden": args.hidden, "batch_size": batch, **scored,
                   "budget_flops": None if fit is None else fit.budget_flops,
                   "calibration_mean_flops": None if fit is None else fit.mean_flops,
                   "thresholds": None if fit is None else fit.policy.thresholds,
                   **timing(net, static, kwargs, xs, args)}
            rows.append(row)
            print({k: row[k] for k in ("method", "batch_size", "accuracy", "update_fraction", "speedup_flops",
                                       "speedup_measured")}, flush=True)
    meta = {"threads": args.threads, "data": f"MNIST train, rows as 28 steps; seeded 55k/5k split; thresholds "
                                             f"fitted on one seeded half of the 5k, scored on the other "
                                             f"({len(y_eval)})",
            "schedule": schedule_text(args), "static_flops": static_flops,
            "command": "python benchmarks/early_stop_rnn.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / f"{NAME}.json", rows, meta)
    columns = ("method", "batch_size", "accuracy", "update_fraction", "speedup_flops", "speedup_measured",
               "ideal_speedup", "static_loop_ms", "ms")
    fmt = {"accuracy": ".4f", "update_fraction": ".3f", "speedup_flops": ".2f", "speedup_measured": ".2f",
           "ideal_speedup": ".2f", "static_loop_ms": ".3f", "ms": ".3f"}
    table = markdown_table([{c: r.get(c) for c in columns} for r in rows], floatfmt=fmt)
    (RESULTS / f"{NAME}.md").write_text(
        f"Schedule: {schedule_text(args)}. Scored on {len(y_eval)} held-out validation samples; "
        f"ms per sample at batch 1 and per batch of 256, threads {args.threads}.\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
