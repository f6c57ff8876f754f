"""Slimmable ladder vs widths trained alone vs DS-Net on CIFAR-10.

CPU-feasible schedule (SGD nesterov, cosine, wd 5e-4, batch 128, crop + flip, seed 0,
seeded 45k/5k split; the shared CIFAR-10 has no test batch, so the 5k split scores):

- `slimmable`: `slimmable_resnet_cifar` (ResNet-20, widths 0.25/0.5/0.75/1.0, switchable
  BN, every width every step with in-place distillation from the widest), `--epochs` at
  lr 0.1, then one more epoch at lr `--finetune-lr` (`slimmable+1`; skipped with
  `--skip-slimmable-plus1`, the ladder is then the `--epochs` network);
- `dsnet`: `dsnet_resnet_cifar` starting from the `--epochs` slimmable network (backbone
  weights; the gate is new), one epoch at lr `--finetune-lr` with the target-FLOPs loss
  (`--target`, a fraction of the widest network's FLOPs) — the same training as
  `slimmable+1`;
- `alone`: static `resnet20` at base widths 4/8/12/16 (the same channel counts as the
  slimmable widths), `--epochs + 1` epochs each at lr 0.1.

Evaluation in eval mode: each width of `slimmable+1` and of the DS-Net backbone (its
ladder after the same training), each network trained alone, and DS-Net's gate-chosen
widths (compact, grouped by width): accuracy, mean FLOPs, width histogram. The target is
DS-Net above the ladder at equal mean FLOPs: `ladder_accuracy_at_dsnet_flops` interpolates
the ladder linearly in FLOPs between neighbouring widths.

    python benchmarks/width_cifar.py                     # --epochs 4
    # smoke run of the script itself (writes benchmarks/results: do not commit those)
    python benchmarks/width_cifar.py --epochs 1 --max-steps 2 --out-dir /tmp/width_smoke

Writes benchmarks/results/width_cifar.{json,md,png}; checkpoints in runs/bench/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.profiling.plots import plot_accuracy_vs_flops
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = "cifar10:" + str(ROOT / "data" / "cifar-10-batches-py")
RESULTS = ROOT / "benchmarks" / "results"
WIDTHS = (0.25, 0.5, 0.75, 1.0)


def train(name: str, model: str, args: dict, epochs: int, lr: float, opts, **extra) -> Path:
    config = TrainConfig(
        name=name, model=model, model_args=args, data=DATA, val_size=5000, epochs=epochs, batch_size=128,
        optimizer="sgd", lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
        channels_last=True, seed=0, out_dir=opts.out_dir, resume=True, threads=opts.threads,
        progress=sys.stderr.isatty(), max_steps_per_epoch=opts.max_steps, **extra)
    start = time.perf_counter()
    result = Trainer(config).fit()
    print(f"{name}: val accuracy {result.get('val_accuracy')} ({time.perf_counter() - start:.0f} s)", flush=True)
    return Path(opts.out_dir) / name / "last.pt"


@torch.no_grad()
def score(model, loader, **kwargs) -> dict:
    """Accuracy, mean FLOPs and (when the model picks widths) the width histogram."""
    correct = count = flops = 0.0
    chosen = torch.zeros(len(WIDTHS), dtype=torch.long)
    for x, y in loader:
        out = model(x.contiguous(memory_format=torch.channels_last), **kwargs)
        correct += float((out.logits.argmax(1) == y).sum())
        count += y.shape[0]
        flops += float(out.flops.sum())
        if "width_index" in out.decisions:
            chosen += torch.bincount(out.decisions["width_index"], minlength=len(WIDTHS))
    return {"accuracy": correct / count, "mean_flops": flops / count,
            "width_histogram": chosen.tolist() if chosen.sum() else None}


def ladder_at(ladder: list[dict], flops: float) -> float | None:
    """The ladder's accuracy at `flops`, linear between neighbouring widths (None outside)."""
    points = sorted((r["mean_flops"], r["accuracy"]) for r in ladder)
    for (f0, a0), (f1, a1) in zip(points, points[1:]):
        if f0 <= flops <= f1:
            return a0 + (a1 - a0) * (flops - f0) / (f1 - f0)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--finetune-lr", type=float, default=0.05)
    parser.add_argument("--target", type=float, default=0.5, help="DS-Net target mean FLOPs / widest FLOPs")
    parser.add_argument("--skip-slimmable-plus1", action="store_true",
                        help="no extra slimmable epoch: the DS-Net backbone's own ladder is the same-training one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--max-steps", type=int, default=None,
                        help="optimizer steps per epoch (shorter schedules; tiny values for smoke runs)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    start = time.perf_counter()
    e = opts.epochs
    tag = f"e{e}" if opts.max_steps is None else f"e{e}x{opts.max_steps}"
    slim_args = {"widths": list(WIDTHS), "inplace_distill": 1.0}
    slim = train(f"cifar10_slimmable20_{tag}", "slimmable_resnet_cifar", slim_args, e, 0.1, opts)
    slim_plus = slim if opts.skip_slimmable_plus1 else train(
        f"cifar10_slimmable20_{tag}_plus1", "slimmable_resnet_cifar", slim_args, 1, opts.finetune_lr, opts,
        init_from=str(slim))
    ladder_name = "slimmable" if opts.skip_slimmable_plus1 else "slimmable+1"
    dsnet = train(f"cifar10_dsnet20_{tag}_plus1_t{opts.target}", "dsnet_resnet_cifar",
                  {"widths": list(WIDTHS), "target_flops_ratio": opts.target}, 1, opts.finetune_lr, opts,
                  init_from=str(slim), init_prefix="backbone.")
    alone = {w: train(f"cifar10_resnet20_w{int(16 * w)}_{tag}_plus1", "resnet20", {"width": int(16 * w)}, e + 1, 0.1,
                      opts) for w in WIDTHS}
    train_seconds = time.perf_counter() - start

    loader = make_eval_loader(load_data(DATA, val_size=5000, seed=0, augment=False).val, 256)
    rows = []
    slim_model, _ = load_trained_model(slim_plus)
    ds_model, _ = load_trained_model(dsnet)
    for w in WIDTHS:
        rows.append({"method": ladder_name, "width": w, **score(slim_model, loader, width=w)})
        rows.append({"method": "dsnet backbone", "width": w, **score(ds_model.backbone, loader, width=w)})
        rows.append({"method": "alone", "width": w, **score(load_trained_model(alone[w])[0], loader)})
    point = {"method": "dsnet", "width": None, **score(ds_model, loader)}
    rows.append(point)
    for name in (ladder_name, "dsnet backbone", "alone"):
        at = ladder_at([r for r in rows if r["method"] == name], point["mean_flops"])
        point[f"{name}_accuracy_at_dsnet_flops"] = at
        point[f"above_{name}"] = None if at is None else point["accuracy"] > at
    for r in rows:
        print(r, flush=True)

    meta = {"threads": opts.threads, "epochs": e, "train_seconds": train_seconds, "target_flops_ratio": opts.target,
            "steps_per_epoch": opts.max_steps or "all (352)",
            "schedule": f"SGD nesterov cosine wd 5e-4 batch 128 crop+flip, {opts.max_steps or 352} steps per epoch; "
                        f"slimmable {e} epochs lr 0.1 (+1 epoch lr "
                        f"{opts.finetune_lr}); dsnet = slimmable {e} epochs + 1 gate epoch lr {opts.finetune_lr}; "
                        f"alone {e + 1} epochs lr 0.1",
            "evaluation": "seeded 5k validation split (45k/5k), eval mode",
            "command": "python benchmarks/width_cifar.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / "width_cifar.json", rows, meta)
    table = markdown_table(
        [{k: r.get(k) for k in ("method", "width", "accuracy", "mean_flops", "width_histogram")} for r in rows],
        floatfmt={"accuracy": ".4f", "mean_flops": ".4g"})
    verdict = {k: v for k, v in point.items() if k.endswith("_at_dsnet_flops") or k.startswith("above_")}
    (RESULTS / "width_cifar.md").write_text(f"Schedule: {meta['schedule']}.\n\n{table}\n\nDS-Net vs ladders: {verdict}\n")
    curves = {name: [(r["mean_flops"], r["accuracy"]) for r in rows if r["method"] == name]
              for name in (ladder_name, "dsnet backbone", "alone")}
    plot_accuracy_vs_flops(curves, RESULTS / "width_cifar.png", title=f"CIFAR-10 dynamic width (ResNet-20, {e}+1 epochs)",
                           static_points={"DS-Net (gate)": (point["mean_flops"], point["accuracy"])})
    print((RESULTS / "width_cifar.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
