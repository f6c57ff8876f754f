"""Accuracy vs executed blocks of the trained layer-skipping models, threshold by threshold.

After the short schedule of `layer_skipping_cifar.py` (which must have run first), most
gates still sit on the "execute" side of 0.5 for every sample: the models' own
inference rule (logit > 0) then runs nearly every block. This script moves the decision
threshold instead and records the accuracy-cost curve each trained model supports:

- gate methods (SkipNet, ConvNet-AIG, BlockDrop): per-block thresholds calibrated so that
  a fraction `rate` of the calibration half executes each gated block (the bias of the
  layer producing the logits is shifted, as `layer_skipping_speedup.py` does; repeated
  passes because a gate's input depends on the earlier gates);
- ACT: the halting units' bias raised by `offset` (halting earlier).

The seeded 5k validation split is cut in two seeded halves: thresholds are fitted on the
calibration half, every figure is scored on the evaluation half, the plain network (same
training) too. `best_saving_within_1pt` is the largest FLOPs saving of a point whose
accuracy is at most 1 point below the plain network's.

    python benchmarks/layer_skipping_cifar_curve.py --depths 32

Writes benchmarks/results/layer_skipping_cifar_curve.{json,md,png}.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.inference import calibrate_gate_rate
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.pipelines.early_exit import split_for_calibration
from dynamicnets.profiling.plots import plot_accuracy_vs_flops
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
DATA = "cifar10:" + str(ROOT / "data" / "cifar-10-batches-py")
RESULTS = ROOT / "benchmarks" / "results"
GATE_METHODS = ("skipnet", "convnet_aig", "blockdrop")


def score(model, loader, depth: int) -> dict:
    metrics = evaluate(model, loader, "cpu")
    n = (depth - 2) // 6
    rate = metrics["block_execution_rate"]
    executed = 3 * n if rate is None else 3 + sum(rate)
    return {"accuracy": metrics["accuracy"], "mean_flops": metrics["mean_flops"], "executed_blocks": executed,
            "total_blocks": 3 * n}


@torch.no_grad()
def raise_halting(model, offset: float):
    shifted = copy.deepcopy(model)
    for units in shifted.halting:
        for unit in units:
            unit.fc.bias.add_(offset)
    return shifted


def merged_with_earlier(rows: list[dict], verdicts: list[dict], depths: list[int]) -> tuple[list, list]:
    """This run's points and verdicts plus the earlier results file's for other depths."""
    path = RESULTS / "layer_skipping_cifar_curve.json"
    if not path.is_file():
        return rows, verdicts
    earlier = json.loads(path.read_text())["records"]
    keep = lambda r: r["depth"] not in depths  # noqa: E731
    by_depth = lambda r: r["depth"]  # noqa: E731
    return (sorted([r for r in earlier["points"] if keep(r)] + rows, key=by_depth),
            sorted([v for v in earlier["verdicts"] if keep(v)] + verdicts, key=by_depth))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[32])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    parser.add_argument("--offsets", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 5.0])
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--calibration-samples", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    val = load_data(DATA, val_size=5000, seed=0, augment=False).val
    calibration, evaluation = split_for_calibration(val, seed=0)
    loader = make_eval_loader(evaluation, 256)
    x_cal = next(iter(make_eval_loader(calibration, args.calibration_samples)))[0]
    rows, verdicts = [], []
    for depth in args.depths:
        runs = Path(args.out_dir)
        plain, _ = load_trained_model(runs / f"cifar10_resnet{depth}_plus{args.finetune_epochs}" / "last.pt")
        base = {"method": "plain", "depth": depth, "setting": "-", **score(plain, loader, depth)}
        rows.append(base)
        for method in (*GATE_METHODS, "act"):
            path = runs / f"cifar10_{method}{depth}_plus{args.finetune_epochs}" / "last.pt"
            if not path.is_file():
                print(f"{path}: missing, skipped", flush=True)
                continue
            model, _ = load_trained_model(path)
            points = [{"method": method, "depth": depth, "setting": "own rule", **score(model, loader, depth)}]
            for knob in (args.rates if method in GATE_METHODS else args.offsets):
                if method in GATE_METHODS:
                    tuned = copy.deepcopy(model)
                    calibrate_gate_rate(tuned, x_cal, knob)
                    setting = f"rate {knob}"
                else:
                    tuned, setting = raise_halting(model, knob), f"halting bias +{knob}"
                points.append({"method": method, "depth": depth, "setting": setting, **score(tuned, loader, depth)})
                print(points[-1], flush=True)
            for p in points:
                p["flops_saving_vs_plain"] = 1 - p["mean_flops"] / base["mean_flops"]
                p["accuracy_drop_vs_plain"] = base["accuracy"] - p["accuracy"]
            rows += points
            ok = [p for p in points if p["accuracy_drop_vs_plain"] <= 0.01]
            best = max(ok, key=lambda p: p["flops_saving_vs_plain"]) if ok else None
            verdicts.append({"method": method, "depth": depth,
                             "best_saving_within_1pt": None if best is None else best["flops_saving_vs_plain"],
                             "at": None if best is None else best["setting"],
                             "executed_blocks": None if best is None else best["executed_blocks"]})
    rows, verdicts = merged_with_earlier(rows, verdicts, args.depths)
    meta = {"threads": args.threads, "evaluation": f"evaluation half ({len(evaluation)}) of the seeded 5k split; "
            f"thresholds fitted on the calibration half ({args.calibration_samples} samples)",
            "command": "python benchmarks/layer_skipping_cifar_curve.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / "layer_skipping_cifar_curve.json", {"points": rows, "verdicts": verdicts}, meta)
    table = markdown_table(rows, floatfmt={"accuracy": ".4f", "mean_flops": ".4g", "executed_blocks": ".1f",
                                           "flops_saving_vs_plain": ".3f", "accuracy_drop_vs_plain": ".4f"})
    (RESULTS / "layer_skipping_cifar_curve.md").write_text(
        f"{meta['evaluation']}.\n\n{table}\n\n{markdown_table(verdicts)}\n")
    curves = {}
    for r in rows:
        if r["method"] != "plain":
            curves.setdefault(f"{r['method']} {r['depth']}", []).append((r["mean_flops"], r["accuracy"]))
    plot_accuracy_vs_flops(curves, RESULTS / "layer_skipping_cifar_curve.png",
                           title="CIFAR-10 layer skipping: thresholds moved after training",
                           static_points={f"plain resnet{r['depth']}": (r["mean_flops"], r["accuracy"])
                                          for r in rows if r["method"] == "plain"})
    print((RESULTS / "layer_skipping_cifar_curve.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
