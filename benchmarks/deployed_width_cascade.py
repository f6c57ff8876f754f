"""The shipped slimmable ResNet-20's width cascades, deployed, against the shipped static ResNet-20
deployed the same way: does a deployment runtime turn more of the cascade's FLOPs saving
into time than eager PyTorch does?

In eager PyTorch on one core, width 0.5 of the slimmable ResNet-20 costs about 0.44 of the
full width's time for 0.25 of its FLOPs (8-32-channel maps: per-op overhead, unfused
BatchNorm and ReLU passes), so a cascade 0.5 -> 1.0 fitted to 0.5x the FLOPs realises
only 0.67-0.76 of its FLOPs speedup at batch 256 (the model card). onnxruntime folds each
BatchNorm into its convolution and fuses the ReLU; this measures what that changes.

Both models are the shipped CIFAR-10 weights (`slimmable_resnet_cifar/cifar10`, and its
same-recipe anchor `resnet20/cifar10`). On the seeded validation split they were trained
with, the cascade (its chain of widths and max-probability thresholds, `fit_width_cascade`)
is fitted to each budget on one seeded half and scored on the other, exactly as the card
and `dynamicnets eval --budget` do. Each cascade and the anchor are exported
(`dynamicnets.deploy.export_model`, ONNX; cached in `--cache`) and loaded with
onnxruntime (one intra-op thread). Timed interleaved in one run
(`dynamicnets.profiling.latency.compare`, one torch thread): the anchor and the cascade
in onnxruntime, and the same two in eager PyTorch (the cascade through the compact
executor, `run_early_exit`), on the first `--batch` scored images as one batch and on
`--singles` of them one at a time.

- `speedup_flops`: the anchor's FLOPs over the cascade's mean FLOPs on exactly the timed
  images;
- `measured`: the anchor's time over the cascade's, in the same runtime;
- `realised = measured / speedup_flops` (the zoo's target: >= 0.85 at batch 256).

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/deployed_width_cascade.py \\
        --data cifar10:path/to/cifar-10-batches-py

Writes `<out>/deployed_width_cascade.json` and `.md` (default `benchmarks/results`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from dynamicnets.data import make_eval_loader
from dynamicnets.deploy import DeployedModel, export_model
from dynamicnets.inference import run_early_exit
from dynamicnets.models import create_model
from dynamicnets.models.pretrained import pretrained_weights
from dynamicnets.pipelines.cascade_budget import fit_cascade_budget
from dynamicnets.pipelines.checkpoint_data import load_checkpoint_data
from dynamicnets.pipelines.early_exit import EarlyExitRequest, split_for_calibration
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.report import format_flops, write_json

CASCADE, ANCHOR = ("slimmable_resnet_cifar", "cifar10"), ("resnet20", "cifar10")


def _export(model, folder: Path, input_shape, policy=None) -> DeployedModel:
    """Export once into `folder` (kept when its manifest exists) and load it with onnxruntime."""
    if not (folder / "manifest.json").is_file():
        export_model(model, folder, format="onnx", input_shape=input_shape, policy=policy)
    return DeployedModel.load(folder)


def _score(deployed: DeployedModel, dataset, batch_size: int) -> dict:
    correct, flops, total = 0, 0.0, 0
    for x, y in make_eval_loader(dataset, batch_size):
        out = deployed(x)
        correct += int((out.logits.argmax(1) == y).sum())
        flops += float(out.flops.sum())
        total += y.shape[0]
    return {"accuracy": correct / total, "mean_flops": flops / total, "samples": total}


def _singles(fn, singles):
    def run() -> None:
        for x in singles:
            fn(x)
    return run


def bench_budget(budget: float, slim, slim_sha: str, anchor_ort, anchor, calibration, evaluation, shape,
                 args) -> list[dict]:
    bound, report = fit_cascade_budget(slim, calibration, EarlyExitRequest(budget_fraction=budget), shape,
                                       args.batch, "cpu")
    cascade, policy = bound.model, bound.policy
    chain = "-".join(f"{w:g}" for w in report["cascade_widths"])
    key = hashlib.sha256(repr((slim_sha, list(policy.thresholds), torch.__version__)).encode()).hexdigest()[:12]
    cascade_ort = _export(cascade, args.cache / f"cascade_{chain}_{key}", shape, policy)
    scored = _score(cascade_ort, evaluation, args.batch)
    batch = torch.stack([evaluation[i][0] for i in range(args.batch)])
    singles = [batch[i:i + 1] for i in range(args.singles)]
    with torch.no_grad():
        eager_out = run_early_exit(cascade, batch, policy)
        ort_out = cascade_ort(batch)
    if not torch.equal(ort_out.decisions["exit_index"], eager_out.exit_index):
        raise SystemExit(f"budget {budget:g}: the deployed cascade took other exits than eager on the timed batch")
    anchor_flops = float(anchor_ort(batch[:1]).flops[0])
    rows = []
    for size, xs in ((args.batch, batch), (1, singles)):
        if size == 1:
            fns = {"anchor onnxruntime": _singles(anchor_ort, xs), "cascade onnxruntime": _singles(cascade_ort, xs),
                   "anchor eager": _singles(anchor, xs),
                   "cascade eager": _singles(lambda x: run_early_exit(cascade, x, policy), xs)}
            timed = torch.cat(xs)
        else:
            fns = {"anchor onnxruntime": lambda: anchor_ort(xs), "cascade onnxruntime": lambda: cascade_ort(xs),
                   "anchor eager": lambda: anchor(xs), "cascade eager": lambda: run_early_exit(cascade, xs, policy)}
            timed = xs
        with torch.inference_mode():
            times = compare(fns, threads=1, min_run_time=args.min_run_time, rounds=args.rounds)
            mean_flops = float(cascade_ort(timed).flops.mean())
        for runtime in ("onnxruntime", "eager"):
            measured = ratio(times, f"anchor {runtime}", f"cascade {runtime}")
            rows.append({"budget": budget, "cascade": chain, "thresholds": list(policy.thresholds),
                         "batch": size, "runtime": runtime,
                         "anchor_ms": times[f"anchor {runtime}"].median_ms,
                         "cascade_ms": times[f"cascade {runtime}"].median_ms,
                         "speedup_flops": anchor_flops / mean_flops, "measured": measured,
                         "realised": measured / (anchor_flops / mean_flops),
                         "accuracy": scored["accuracy"], "mean_flops": scored["mean_flops"],
                         "decisions_equal": True})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the CIFAR-10 spec, e.g. cifar10:path/to/cifar-10-batches-py")
    p.add_argument("--budgets", default="0.5,0.6", help="fractions of the widest width's FLOPs")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--singles", type=int, default=64)
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cache", type=Path, default=Path("runs/deployed_width_cascade"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    torch.set_num_threads(1)  # onnxruntime sessions take torch's thread count when loaded
    start = time.time()

    slim_weights, anchor_weights = pretrained_weights(*CASCADE), pretrained_weights(*ANCHOR)
    if any(slim_weights.data[k] != anchor_weights.data[k] for k in ("val_size", "seed")):
        raise SystemExit("the two weights were validated on different splits")
    slim = create_model(CASCADE[0], pretrained=CASCADE[1]).eval()
    anchor = create_model(ANCHOR[0], pretrained=ANCHOR[1]).eval()
    prepared = load_checkpoint_data(slim_weights.checkpoint_fields(), "slimmable weights", args.data, "val")
    calibration, evaluation = split_for_calibration(prepared.dataset, prepared.seed)
    shape = tuple(slim_weights.input_shape)
    anchor_ort = _export(anchor, args.cache / f"anchor_resnet20_{anchor_weights.sha256[:12]}_{torch.__version__}", shape)
    anchor_scored = _score(anchor_ort, evaluation, args.batch)

    rows = []
    for budget in (float(b) for b in args.budgets.split(",")):
        rows += bench_budget(budget, slim, slim_weights.sha256, anchor_ort, anchor, calibration, evaluation, shape,
                             args)
        print(f"budget {budget:g}: done ({time.time() - start:.0f} s)", flush=True)
    meta = {"cascade_weights": f"{CASCADE[0]}/{CASCADE[1]}", "anchor_weights": f"{ANCHOR[0]}/{ANCHOR[1]}",
            "anchor_accuracy": anchor_scored["accuracy"], "anchor_flops": anchor_scored["mean_flops"],
            "scored_samples": len(evaluation), "calibration_samples": len(calibration), "data": args.data,
            "threads": 1, "batch": args.batch, "singles": args.singles, "rounds": args.rounds,
            "min_run_time": args.min_run_time, "seconds": round(time.time() - start, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "deployed_width_cascade.json", rows, meta=meta)
    lines = ["| budget | cascade | batch | runtime | anchor ms (batch 1: all singles) | cascade ms | speedup FLOPs | measured | realised "
             "| accuracy % | mean FLOPs |", "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['budget']:g} | {r['cascade']} | {r['batch']} | {r['runtime']} | {r['anchor_ms']:.2f} | "
                     f"{r['cascade_ms']:.2f} | {r['speedup_flops']:.2f} | {r['measured']:.2f} | "
                     f"**{r['realised']:.2f}** | {100 * r['accuracy']:.2f} | {format_flops(r['mean_flops'])} |")
    lines.append(f"\nAnchor (ResNet-20, onnxruntime) on the same {len(evaluation)} images: "
                 f"{100 * anchor_scored['accuracy']:.2f}% at {format_flops(anchor_scored['mean_flops'])}.")
    (args.out / "deployed_width_cascade.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({k: meta[k] for k in ("anchor_accuracy", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
