"""Does a calibrated mean-FLOPs budget hold on data the calibration did not see?

Budgeted batch classification fits early-exit thresholds on a calibration sample. Plain
calibration makes the *calibration* mean meet the budget; a fresh sample then lands on
either side about equally often. `calibrate_thresholds(..., confidence=c, eval_size=m)`
holds an upper confidence bound instead, so a fresh batch of `m` samples meets the budget
with probability about `c` (i.i.d. data).

Setting: a `multi_exit_cnn` (width 32, the demo's dynamic model) is trained on one half
of scikit-learn's digits; the exit logits of the other half form a pool. Each repeat draws
a calibration sample and a disjoint fresh sample from the pool at random, fits thresholds
for each mode (plain, confidence 0.9, confidence 0.95) on the first and measures the mean
FLOPs the thresholds spend on the second (exactly the compact executor's decisions and
costs). Sizes 90/90 are the demo's evaluation protocol (the two halves of a 180-sample
validation split). Per mode and setting: the fraction of repeats whose fresh mean met the
budget (`held`, with its binomial 95% interval half-width), the mean and the worst
fresh-mean / budget, the mean overshoot `E[max(0, spent - budget)] / budget`, the
standard deviation the calibration predicted for the fresh mean against the one observed
over the repeats, and the fresh accuracy (the price of the margin).

Any other multi-exit checkpoint (e.g. a CIFAR-10 MSDNet) can be used instead: `--checkpoint
PATH` draws from its validation split (the data spec it was trained on).

    OMP_NUM_THREADS=1 python benchmarks/budget_holdout.py                     # digits, ~5 min
    OMP_NUM_THREADS=1 python benchmarks/budget_holdout.py --checkpoint runs/x/best.pt --name cifar10

Writes benchmarks/results/budget_holdout.{json,md} (or budget_holdout_<name>.*); the
digits model goes to runs/bench/ (not committed; a finished run is reused).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from dynamicnets.data import make_eval_loader
from dynamicnets.gates import get_criterion
from dynamicnets.inference import calibrate_thresholds, collect_exit_logits, exit_decisions
from dynamicnets.pipelines.checkpoint_data import load_checkpoint_data
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.profiling.report import atomic_write, format_flops, markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODES = (None, 0.9, 0.95)
COLUMNS = ["n_cal", "n_eval", "budget", "mode", "held", "held_ci95", "mean_spent_over_budget",
           "worst_spent_over_budget", "mean_overshoot", "predicted_std", "observed_std", "accuracy"]


def digits_pool(epochs: int, out_dir: Path) -> tuple[list[torch.Tensor], torch.Tensor, list[float], dict]:
    """Train `multi_exit_cnn` on one seeded half of digits (val_size=0.5); the exit logits of
    the other half (the pool), the exit costs and what was trained."""
    config = TrainConfig(name="budget_holdout_digits", model="multi_exit_cnn", model_args={"width": 32},
                         data="digits", val_size=0.5, epochs=epochs, batch_size=64, lr=0.05, seed=0,
                         device="cpu", out_dir=str(out_dir), resume=True, threads=1,
                         progress=sys.stderr.isatty())
    Trainer(config).fit()
    checkpoint = out_dir / config.name / "last.pt"
    logits, targets, costs, about = checkpoint_pool(checkpoint)
    return logits, targets, costs, {**about, "trained": f"{epochs} epochs on one seeded half of digits; the pool is the other half"}


def checkpoint_pool(checkpoint: Path) -> tuple[list[torch.Tensor], torch.Tensor, list[float], dict]:
    """The exit logits of a multi-exit checkpoint's validation split, its exit costs."""
    model, ckpt = load_trained_model(str(checkpoint))
    prepared = load_checkpoint_data(ckpt, str(checkpoint), None, "val")
    logits, targets = collect_exit_logits(model, make_eval_loader(prepared.dataset, 256))
    costs = [float(c) for c in model.exit_costs(tuple(prepared.bundle.input_shape))]
    data = prepared.spec.split(":")[0]  # the name; where its files lie is this machine's business
    return logits, targets, costs, {"model": ckpt["model_name"], "data": data,
                                    "pool": f"the {data} validation split the checkpoint was trained beside"}


def one_setting(logits, targets, costs, budget, n_cal, n_eval, repeats, seed) -> list[dict]:
    """`repeats` paired draws (the same calibration and fresh samples for every mode)."""
    scores = [get_criterion("maxprob").score(l) for l in logits]
    table = torch.tensor(costs, dtype=torch.float64)
    stacked = torch.stack(logits)
    gen = torch.Generator().manual_seed(seed)
    found = {mode: {"spent": [], "correct": [], "std": []} for mode in MODES}
    for _ in range(repeats):
        order = torch.randperm(targets.shape[0], generator=gen)
        cal, fresh = order[:n_cal], order[n_cal:n_cal + n_eval]
        for mode in MODES:
            fit = calibrate_thresholds([l[cal] for l in logits], targets[cal], costs, budget, iterations=30,
                                       confidence=mode, eval_size=n_eval)
            chosen = exit_decisions([s[fresh] for s in scores], fit.policy.thresholds)
            picked = stacked[chosen, fresh]
            found[mode]["spent"].append(float(table[chosen].mean()))
            found[mode]["correct"].append(float((picked.argmax(1) == targets[fresh]).double().mean()))
            found[mode]["std"].append(fit.spread.mean_std)
    rows = []
    for mode, got in found.items():
        spent = torch.tensor(got["spent"], dtype=torch.float64)
        held = float((spent <= budget).double().mean())
        rows.append({
            "n_cal": n_cal, "n_eval": n_eval, "budget": budget, "budget_text": format_flops(budget),
            "mode": "plain (mean)" if mode is None else f"confidence {mode}", "confidence": mode,
            "repeats": repeats, "held": held, "held_ci95": 1.96 * math.sqrt(max(held * (1 - held), 1e-12) / repeats),
            "mean_spent_over_budget": float(spent.mean()) / budget,
            "worst_spent_over_budget": float(spent.max()) / budget,
            "mean_overshoot": float((spent - budget).clamp(min=0).mean()) / budget,
            "predicted_std": sum(got["std"]) / repeats, "observed_std": float(spent.std()),
            "accuracy": sum(got["correct"]) / repeats,
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a multi-exit checkpoint (default: train on digits)")
    parser.add_argument("--name", default=None, help="results go to budget_holdout_<name>.* (with --checkpoint)")
    parser.add_argument("--epochs", type=int, default=15, help="digits training epochs")
    parser.add_argument("--repeats", type=int, default=400, help="random calibration/fresh draws per setting")
    parser.add_argument("--budgets", default="0.2,0.33,0.6",
                        help="budgets as fractions of the way from the first exit's cost to the last's")
    parser.add_argument("--sizes", default=None,
                        help="n_cal/n_eval pairs, e.g. 90/90,300/300 (default: digits 90/90,200/200,449/449; "
                             "a checkpoint: a quarter and a half of its pool)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    if args.checkpoint is None:
        logits, targets, costs, about = digits_pool(args.epochs, ROOT / "runs" / "bench")
        stem, sizes = "budget_holdout", [(90, 90), (200, 200), (449, 449)]
    else:
        logits, targets, costs, about = checkpoint_pool(Path(args.checkpoint))
        stem = f"budget_holdout_{args.name or Path(args.checkpoint).parent.name}"
        pool = targets.shape[0]
        sizes = [(pool // 4, pool // 4), (pool // 2, pool - pool // 2)]
    if args.sizes:
        sizes = [tuple(int(v) for v in pair.split("/")) for pair in args.sizes.split(",")]
    accuracy = float((logits[-1].argmax(1) == targets).double().mean())
    print(f"{about}: pool {targets.shape[0]}, last-exit accuracy {accuracy:.4f}, exit costs "
          f"{[format_flops(c) for c in costs]}", flush=True)
    rows = []
    for i, (n_cal, n_eval) in enumerate(sizes):
        for j, fraction in enumerate(float(f) for f in args.budgets.split(",")):
            budget = costs[0] + fraction * (costs[-1] - costs[0])
            for row in one_setting(logits, targets, costs, budget, n_cal, n_eval, args.repeats, seed=100 * i + j):
                rows.append(row)
                print(f"{n_cal}/{n_eval} budget {format_flops(budget)} {row['mode']:>16}: held {row['held']:.3f} "
                      f"mean {row['mean_spent_over_budget']:.4f} worst {row['worst_spent_over_budget']:.4f} "
                      f"std predicted {format_flops(row['predicted_std'])} observed "
                      f"{format_flops(row['observed_std'])} acc {row['accuracy']:.4f}", flush=True)
    meta = {**about, "pool_size": int(targets.shape[0]), "last_exit_accuracy": accuracy, "exit_costs": costs,
            "repeats": args.repeats, "criterion": "maxprob", "seconds": time.perf_counter() - start}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{stem}.json", rows, meta)
    table = markdown_table([{**r, "budget": r["budget_text"]} for r in rows], COLUMNS,
                           floatfmt={"held": ".3f", "held_ci95": ".3f", "mean_spent_over_budget": ".4f",
                                     "worst_spent_over_budget": ".4f", "mean_overshoot": ".4f",
                                     "predicted_std": ".4g", "observed_std": ".4g", "accuracy": ".4f"})
    atomic_write(RESULTS / f"{stem}.md",
                 f"{meta['model']} on {meta['data']}; pool: {meta['pool']} ({meta['pool_size']} samples, last-exit "
                 f"accuracy {accuracy:.4f}); {args.repeats} random disjoint calibration/fresh draws per row, "
                 f"max-probability exits, exit costs {', '.join(format_flops(c) for c in costs)} FLOPs.\n\n"
                 f"{table}\n")
    print(f"wrote {RESULTS / stem}.{{json,md}} in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
