"""LSTM-Jump against the static LSTM: accuracy, tokens read, and what jumping saves in time.

Trains (same schedule, same seed, same cell and head sizes) the static `lstm_classifier`,
which reads every token, and `lstm_jump_classifier` (Yu, Lee, Le 2017: read `R` tokens,
then jump `0..K` ahead, REINFORCE with a +1/-1 correctness reward), then scores both on the
seeded validation split and times them on this CPU at batch 256 and batch 1 (`--singles`
validation samples one after the other, each with its own jumps):

- `ms`: the model's own inference (LSTM-Jump: greedy jumps, compact execution);
- `static_loop_ms`: `lstm_classifier`'s cell loop over every token, timed in the same run
  (the FLOPs baseline); `speedup_measured = static_loop_ms / ms`;
- `fused_ms`: PyTorch's one-call `nn.LSTM` with the static model's weights over all tokens
  (what a user would deploy instead of the cell loop);
- `ideal_speedup`: the static loop over as many tokens as LSTM-Jump reads on average,
  against the full static loop (the speedup a static network of the executed size gets).

`update_fraction` is the mean fraction of tokens read; `speedup_flops` = static mean FLOPs
÷ mean FLOPs (jump-head evaluations included).

Tasks: `jump_task` (the paper's number prediction: the first token is an index, the
label the token there; 64 tokens of 16 values; R = 1, K = 16, N = 1 as in the paper's
setting: read the index, jump once, read, answer; entropy bonus 0.01), then MNIST read as 28 rows of 28
pixels on a short schedule (`--mnist-epochs`; `--mnist ''` skips it; R = 2, K = 4, no jump
limit, entropy bonus 0.01).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/lstm_jump.py               # ~25 min here
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/lstm_jump.py --time-only   # re-time finished runs (~6 min)

Writes benchmarks/results/lstm_jump.{json,md}; checkpoints in runs/bench/.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import dynamicnets.models.temporal.lstm_jump  # noqa: F401  (registers lstm_jump_classifier)
from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.data.jump_task import parse_options
from dynamicnets.models.temporal.sequence import as_sequence
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.profiling.fused_rnn import fused_rnn
from dynamicnets.profiling.latency import compare
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def train(name: str, model: str, model_args: dict, data: str, epochs: int, args) -> Path:
    """Train (or resume) one run; the path of its last checkpoint."""
    config = TrainConfig(name=name, model=model, model_args=model_args, data=data, val_size=0.1, epochs=epochs,
                         batch_size=128, optimizer="adamw", lr=args.lr, weight_decay=0.0, schedule="cosine",
                         grad_clip=1.0, seed=0, device="cpu", out_dir=args.out_dir, resume=True,
                         threads=args.threads, progress=sys.stderr.isatty())
    if not args.time_only:
        Trainer(config).fit()
    return Path(args.out_dir) / name / "last.pt"


@torch.no_grad()
def score(model, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy, mean FLOPs and tokens read on the whole validation split (eval, compact)."""
    outs = [model(x[i : i + 512]) for i in range(0, len(x), 512)]
    logits = torch.cat([o.logits for o in outs])
    flops = torch.cat([o.flops for o in outs])
    gates = [o.decisions.get("gates") for o in outs]
    fraction = 1.0 if gates[0] is None else float(torch.cat(gates).mean())
    return {"accuracy": float((logits.argmax(1) == y).float().mean()), "mean_flops": float(flops.mean()),
            "update_fraction": fraction}


def repeated(fn, target_ms: float):
    """`(fn repeated n times, n)` with `n` such that one call of the result takes about
    `target_ms` (at least once)."""
    fn()
    start = time.perf_counter()
    fn()
    n = max(1, math.ceil(target_ms / max(1e-3, 1e3 * (time.perf_counter() - start))))
    return (lambda: [fn() for _ in range(n)]), n


@torch.no_grad()
def timing(model, static, xs: list[torch.Tensor], reads: float, args) -> dict:
    """Time the calls on every tensor of `xs` in a row (one batch of 256, or single samples).

    Every timed unit is repeated to last about `--unit-ms`: on a core shared by several
    processes a call of 1 ms often runs inside one time slice at full speed while a call of
    100 ms gets the core's average share, which would bias the ratio towards the short call."""
    lstm = fused_rnn(static.cell)

    def steps_of(x: torch.Tensor) -> torch.Tensor:  # (B, T, features): the steps the static classifier reads
        return as_sequence("lstm_classifier", x, static.in_chans, static.row_width, static.reading)

    k = max(1, round(reads))
    fns = {"model": lambda: [model(x) for x in xs], "static": lambda: [static(x) for x in xs],
           "fused": lambda: [static.head(lstm(steps_of(x))[0][:, -1]) for x in xs],
           "ideal": lambda: [static(x[:, :, :k]) for x in xs]}
    units = {name: repeated(fn, args.unit_ms) for name, fn in fns.items()}
    timed = compare({name: unit for name, (unit, _) in units.items()}, threads=args.threads,
                    min_run_time=args.min_run_time, rounds=args.rounds)
    ms = {name: timed[name].median_ms / units[name][1] for name in fns}
    return {"ms": ms["model"], "static_loop_ms": ms["static"], "fused_ms": ms["fused"],
            "speedup_measured": ms["static"] / ms["model"], "ideal_steps": k,
            "ideal_speedup": ms["static"] / ms["ideal"]}


def run_task(task: str, data: str, epochs: int, static_args: dict, jump_args: dict, args) -> list[dict]:
    tag = f"{task}_h{args.hidden}_e{epochs}"
    paths = {"lstm": train(f"{tag}_lstm", "lstm_classifier", static_args, data, epochs, args),
             "lstm_jump": train(f"{tag}_jump_{jump_tag(jump_args)}", "lstm_jump_classifier",
                                {**static_args, **jump_args}, data, epochs, args)}
    bundle = load_data(data, val_size=0.1, seed=0, augment=False)
    x, y = next(iter(make_eval_loader(bundle.val, len(bundle.val))))
    static, _ = load_trained_model(paths["lstm"])
    static_score = score(static, x, y)
    steps = x.shape[2]
    rows = []
    for method, path in paths.items():
        model, _ = load_trained_model(path)
        scored = static_score if method == "lstm" else score(model, x, y)
        reads = scored["update_fraction"] * steps
        for batch in (256, 1):
            xs = [x[:batch]] if batch > 1 else [x[i : i + 1] for i in range(args.singles)]
            rows.append({"task": task, "method": method, "hidden": args.hidden, "batch_size": batch,
                         "accuracy": scored["accuracy"], "update_fraction": scored["update_fraction"],
                         "tokens_read": reads, "total_steps": steps, "mean_flops": scored["mean_flops"],
                         "speedup_flops": static_score["mean_flops"] / scored["mean_flops"],
                         **timing(model, static, xs, reads, args), "epochs": epochs,
                         "model_args": {**static_args, **(jump_args if method == "lstm_jump" else {})}})
            print({k: rows[-1][k] for k in ("task", "method", "batch_size", "accuracy", "update_fraction",
                                            "speedup_flops", "speedup_measured")}, flush=True)
    return rows


def jump_tag(jump_args: dict) -> str:
    return "r{read_steps}_k{max_jump}_n{max_jumps}_ent{entropy_weight:g}".format(**{"entropy_weight": 0.0, **jump_args})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="jump_task?length=64&vocab=16&size=10000&seed=0")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--max-jump", type=int, default=16, help="K on jump_task (>= the largest index, 15)")
    parser.add_argument("--mnist", default="data/mnist", help="MNIST IDX folder ('' to skip)")
    parser.add_argument("--mnist-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--unit-ms", type=float, default=150.0, help="each timed unit repeats its call to last this long")
    parser.add_argument("--singles", type=int, default=32, help="validation samples timed one by one for batch 1")
    parser.add_argument("--time-only", action="store_true", help="use finished runs, train nothing")
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = parse_options(args.task.partition("?")[2])
    length, vocab = options.length, options.vocab
    rows = run_task("jump_task", args.task, args.epochs, {"hidden": args.hidden, "length": length},
                    {"read_steps": 1, "max_jump": args.max_jump, "max_jumps": 1, "entropy_weight": 0.01}, args)
    schedules = {"jump_task": f"{args.epochs} epochs"}
    if args.mnist:
        rows += run_task("mnist_rows", f"mnist:{args.mnist}", args.mnist_epochs,
                         {"hidden": args.hidden, "length": 28, "row_width": 28},
                         {"read_steps": 2, "max_jump": 4, "max_jumps": None, "entropy_weight": 0.01}, args)
        schedules["mnist_rows"] = f"{args.mnist_epochs} epochs (short)"
    schedule = (f"AdamW (no weight decay) lr {args.lr:g} cosine, batch 128, grad clip 1, seed 0, hidden {args.hidden}; "
                + "; ".join(f"{k}: {v}" for k, v in schedules.items()))
    meta = {"threads": args.threads, "schedule": schedule, "task": args.task, "vocab": vocab,
            "mnist": args.mnist or None, "validation": "seeded 10% validation split of each training set",
            "command": "python benchmarks/lstm_jump.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / "lstm_jump.json", rows, meta)
    columns = ("task", "method", "batch_size", "accuracy", "update_fraction", "speedup_flops", "speedup_measured",
               "ideal_speedup", "static_loop_ms", "ms", "fused_ms")
    table = markdown_table([{c: r.get(c) for c in columns} for r in rows],
                           floatfmt={"accuracy": ".4f", "update_fraction": ".3f", "speedup_flops": ".2f",
                                     "speedup_measured": ".2f", "ideal_speedup": ".2f", "static_loop_ms": ".3g",
                                     "ms": ".3g", "fused_ms": ".3g"})
    (RESULTS / "lstm_jump.md").write_text(f"Schedule: {schedule}.\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
