"""DeepSloth on CIFAR-10: early-exit efficacy and accuracy of an undefended and two
adversarially trained early-exit ResNet-20s, under no attack, PGD-20 and DeepSloth-20.

Model: `resnet_exits` (ResNet-20 with exits after stages 1 and 2, three exits; 31.6 /
60.1 / 86.3 MFLOPs per sample at exits 0 / 1 / 2). Data: the seeded 45k/5k split of the
CIFAR-10 training files. CPU schedule (one core, ~170 training images/s; about 60 min of
single-core time in all):

1. undefended: 6 epochs from scratch (`configs/cifar10_resnet_exits_deepsloth.yaml`,
   ~26 min);
2. PGD adversarial training and training on slowdown examples: the undefended best.pt
   fine-tuned for half an epoch (176 steps of 128, lr 0.01 cosine) on attacked inputs
   only, eps 8/255, 5 steps of 2/255
   (`configs/cifar10_resnet_exits_deepsloth_{pgd,slowdown}.yaml`, ~13 min each: each
   step runs 5 attack passes besides its own);
3. this script (~7 min): for each model, maxprob thresholds calibrated on clean inputs
   of one seeded half of the validation split to a mean budget of `--budget` of the full
   cost, then the first `--samples` images of the other half scored clean and attacked
   (PGD-20: untargeted, cross-entropy of the final exit; DeepSloth-20: every internal
   exit toward uniform; eps 8/255, 20 steps of 2.5 eps / 20 = 1/255, seeded random
   starts), with the same thresholds, without and with a per-sample cap (`--cap`,
   default the cost of exit 1).

    OMP_NUM_THREADS=1 taskset -c 1 dynamicnets train --config configs/cifar10_resnet_exits_deepsloth.yaml
    OMP_NUM_THREADS=1 taskset -c 1 dynamicnets train --config configs/cifar10_resnet_exits_deepsloth_pgd.yaml
    OMP_NUM_THREADS=1 taskset -c 1 dynamicnets train --config configs/cifar10_resnet_exits_deepsloth_slowdown.yaml
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/deepsloth_cifar.py

Writes benchmarks/results/deepsloth_cifar.{json,md}. Every figure is a count (accuracy,
exits taken, FLOPs), so nothing here depends on a quiet machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dynamicnets.pipelines.attack import AttackRequest, attack_checkpoint
from dynamicnets.pipelines.checkpoints import load_trained_model, run_checkpoint
from dynamicnets.pipelines.early_exit import EarlyExitRequest
from dynamicnets.profiling.report import atomic_write, format_flops, markdown_table, write_json

ROOT = Path(__file__).resolve().parents[1]
ROWS = {  # defence -> run folder
    "undefended": "cifar10_resnet_exits_deepsloth",
    "PGD adversarial training": "cifar10_resnet_exits_deepsloth_pgd",
    "training on slowdown examples": "cifar10_resnet_exits_deepsloth_slowdown",
}


def evaluate_row(checkpoint: Path, opts: argparse.Namespace) -> tuple[list[dict], dict]:
    """Clean, PGD and DeepSloth records of one checkpoint (uncapped and capped), and meta."""
    model, _ = load_trained_model(checkpoint)
    costs = model.exit_costs((3, 32, 32))
    cap = float(costs[1]) if opts.cap is None else opts.cap
    records, meta = [], {}
    for kind in ("pgd", "slowdown"):
        result = attack_checkpoint(AttackRequest(
            checkpoint=str(checkpoint), kind=kind, eps=opts.eps, steps=opts.steps, samples=opts.samples,
            early_exit=EarlyExitRequest(policy="maxprob", budget_fraction=opts.budget, max_flops=cap),
            batch_size=opts.batch_size, seed=0,
        ))
        clean = [r for r in result["records"] if r["attack"] == "none"]
        if records:  # the clean rows of the second call repeat the first call's exactly
            assert clean == [r for r in records if r["attack"] == "none"], "clean rows differ between calls"
        else:
            records += clean
        records += [r for r in result["records"] if r["attack"] != "none"]
        meta[kind] = result["meta"]
    return records, meta


def tables(rows: list[dict], full: float, steps: int) -> str:
    """The Markdown: efficacy / accuracy per defence and attack, then every measure of
    every cell, without and with the cap."""
    labels = {"none": "no attack", "pgd": f"PGD-{steps}", "slowdown": f"DeepSloth-{steps}"}
    main_rows, long_rows = [], []
    for defence in ROWS:
        cell = {(r["attack"], r["cap"] is not None): r for r in rows if r["defense_row"] == defence}
        if not cell:
            continue
        main_rows.append({"defence": defence, **{
            f"{label}: efficacy / accuracy": f"{cell[(a, False)]['efficacy']:.3f} / {cell[(a, False)]['accuracy']:.3f}"
            for a, label in labels.items()}})
        for capped in (False, True):
            for a, label in labels.items():
                r = cell[(a, capped)]
                long_rows.append({
                    "defence": defence, "cap": format_flops(r["cap"]) if capped else "none", "attack": label,
                    "efficacy": f"{r['efficacy']:.3f}", "accuracy": f"{r['accuracy']:.3f}",
                    "mean FLOPs": f"{format_flops(r['mean_flops'])} ({r['mean_flops'] / full:.1%})",
                    "max FLOPs": format_flops(r["max_flops"]),
                    "exits taken": "/".join(str(n) for n in r["exit_histogram"]),
                })
    return (markdown_table(main_rows) + "\n\nEvery cell without and with a per-sample cap: mean FLOPs (share of "
            f"the full network's {format_flops(full)}), the most one image cost, and how many images left at "
            "each exit:\n\n" + markdown_table(long_rows) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="folder holding the three run folders")
    parser.add_argument("--samples", type=int, default=500, help="validation images attacked and scored per model")
    parser.add_argument("--budget", type=float, default=0.5, help="clean mean-FLOPs budget, a fraction of the full")
    parser.add_argument("--cap", type=float, default=None, help="per-sample FLOPs cap (default: exit 1's cost)")
    parser.add_argument("--eps", default="8/255", help="L-infinity radius in pixel units")
    parser.add_argument("--steps", type=int, default=20, help="attack steps")
    parser.add_argument("--batch-size", type=int, default=100, help="images per attack call")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"), help="where the results go")
    opts = parser.parse_args()
    rows, meta = [], {"samples": opts.samples, "budget_fraction": opts.budget, "eps": opts.eps, "steps": opts.steps}
    for defence, folder in ROWS.items():
        checkpoint = run_checkpoint(Path(opts.runs) / folder)
        records, row_meta = evaluate_row(checkpoint, opts)
        rows += [{"defense_row": defence, "checkpoint": str(checkpoint.relative_to(ROOT)
                                                             if checkpoint.is_relative_to(ROOT) else checkpoint),
                  **r} for r in records]
        meta[defence] = {k: row_meta["slowdown"][k] for k in ("defense", "thresholds", "exit_costs", "full_flops",
                                                               "protocol", "calibration_mean_flops",
                                                               "calibration_accuracy", "step_size")}
        meta[defence]["perturbation_linf"] = {k: m["perturbation_linf"] for k, m in row_meta.items()}
        print(f"{defence}: done", file=sys.stderr, flush=True)
    out = Path(opts.out_dir)
    write_json(out / "deepsloth_cifar.json", rows, meta)
    full = float(next(iter(m["full_flops"] for k, m in meta.items() if isinstance(m, dict) and "full_flops" in m)))
    thresholds = "; ".join(f"{d}: {', '.join(f'{t:.3f}' for t in meta[d]['thresholds'])}" for d in ROWS if d in meta)
    text = ("# DeepSloth on CIFAR-10 (resnet_exits, 3 exits)\n\n"
            f"{opts.samples} validation images per model, eps {opts.eps}, {opts.steps} steps; maxprob thresholds "
            f"calibrated on clean validation images to {opts.budget:.0%} of the full cost ({thresholds}).\n\n"
            + tables(rows, full, opts.steps))
    atomic_write(out / "deepsloth_cifar.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
