"""The shipped DynamicViT, deployed as one ONNX graph per keep ratio, against the static ViT
deployed the same way: how much of the token-pruning FLOPs saving does onnxruntime turn
into time, next to eager PyTorch?

Under a keep-ratio `TokenPolicy` every sample keeps the same number of tokens at every
pruning stage, so the whole model (scorers, top-k, gather, the shorter blocks) is one
static graph (`dynamicnets.deploy`). Both models are shipped CIFAR-10 weights
(`dynamic_vit_cifar/cifar10` and `vit_cifar/cifar10`, the ViT it was fine-tuned from; the
timing depends on the architecture, not on the weights). Each keep ratio and the anchor
are exported (`export_model`, ONNX; cached in `--cache`), checked against eager compact
inference on the timed batch (same kept tokens, same predictions), scored on the
evaluation half of the validation split the weights were trained with (the half the model
card scores), and timed in one interleaved run per batch size
(`dynamicnets.pipelines.zoo_timing`, one torch thread, one onnxruntime thread): the
anchor and each ratio, in onnxruntime and in eager PyTorch.

- `speedup_flops`: the anchor's FLOPs over the ratio's, on exactly the timed images;
- `measured`: the anchor's time over the ratio's, in the same runtime;
- `realised = measured / speedup_flops` (the zoo's target: >= 0.85 at batch 256).

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/deployed_token_pruning.py \\
        --data cifar10:path/to/cifar-10-batches-py

Writes `<out>/deployed_token_pruning.json` and `.md` (default `benchmarks/results`).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import time
from pathlib import Path

import torch

import dynamicnets as dn
from dynamicnets.deploy import DeployedModel, export_model
from dynamicnets.inference.token_policy import TokenPolicy
from dynamicnets.models import create_model
from dynamicnets.models.pretrained import pretrained_weights
from dynamicnets.pipelines.checkpoint_data import load_checkpoint_data
from dynamicnets.pipelines.early_exit import split_for_calibration
from dynamicnets.pipelines.zoo_timing import TIMED_BATCH_SIZES, mean_flops, score, speedups, timed_inputs
from dynamicnets.profiling.report import format_flops, write_json

PRUNING, ANCHOR = ("dynamic_vit_cifar", "cifar10"), ("vit_cifar", "cifar10")


def _export(model, folder: Path, input_shape, policy=None) -> DeployedModel:
    """Export once into `folder` (kept when its manifest exists) and load it with onnxruntime."""
    if not (folder / "manifest.json").is_file():
        export_model(model, folder, format="onnx", input_shape=input_shape, policy=policy)
    return DeployedModel.load(folder)


def _ratios(text: str, trained: float) -> list[float]:
    return [trained if r.strip() == "trained" else float(r) for r in text.split(",") if r.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the CIFAR-10 spec, e.g. cifar10:path/to/cifar-10-batches-py")
    p.add_argument("--ratios", default="trained,0.5", help="keep ratios ('trained': the model's own)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per callable and round")
    p.add_argument("--cache", type=Path, default=Path("runs/deployed_token_pruning"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    torch.set_num_threads(1)  # onnxruntime sessions take torch's thread count when loaded
    start = time.time()

    pruned_weights, anchor_weights = pretrained_weights(*PRUNING), pretrained_weights(*ANCHOR)
    if any(pruned_weights.data[k] != anchor_weights.data[k] for k in ("val_size", "seed")):
        raise SystemExit("the two weights were validated on different splits")
    pruned = create_model(PRUNING[0], pretrained=PRUNING[1]).eval()
    anchor = create_model(ANCHOR[0], pretrained=ANCHOR[1]).eval()
    prepared = load_checkpoint_data(pruned_weights.checkpoint_fields(), "DynamicViT weights", args.data, "val")
    _, evaluation = split_for_calibration(prepared.dataset, prepared.seed)
    shape = tuple(pruned_weights.input_shape)
    version = torch.__version__
    ort_version = importlib.metadata.version("onnxruntime")
    anchor_ort = _export(anchor, args.cache / f"anchor_{anchor_weights.sha256[:12]}_{version}_{ort_version}", shape)
    timed = timed_inputs(evaluation)
    found = {"anchor": score(anchor_ort, evaluation)}
    ort, eager = {}, {}
    for r in _ratios(args.ratios, pruned.keep_ratio):
        policy = TokenPolicy(keep_ratio=r)
        key = hashlib.sha256(repr((pruned_weights.sha256, r, version, dn.__version__, ort_version)).encode()
                             ).hexdigest()[:12]
        ort[r] = _export(pruned, args.cache / f"keep_{r:g}_{key}", shape, policy)
        eager[r] = lambda x, policy=policy: pruned(x, policy=policy)
        with torch.inference_mode():
            ours, ref = ort[r](timed[256][0]), eager[r](timed[256][0])
        same = all(torch.equal(ours.decisions[k], ref.decisions[k]) for k in ref.decisions if k.startswith("kept."))
        if not same or not torch.equal(ours.logits.argmax(1), ref.logits.argmax(1)):
            raise SystemExit(f"keep ratio {r:g}: the deployed graph kept other tokens or predicted other classes "
                             f"than eager on the timed batch")
        found[r] = score(ort[r], evaluation, decision="tokens")
        print(f"keep ratio {r:g}: exported and scored ({time.time() - start:.0f} s)", flush=True)

    rows = []
    for size in TIMED_BATCH_SIZES:
        batches = timed[size]
        calls = {**{f"ort {r:g}": fn for r, fn in ort.items()}, "anchor eager": anchor,
                 **{f"eager {r:g}": fn for r, fn in eager.items()}}
        measured = speedups(anchor_ort, calls, batches, threads=1, min_run_time=args.min_run_time)
        anchor_flops = mean_flops(anchor_ort, batches)
        for r in ort:
            flops_speedup = anchor_flops / mean_flops(ort[r], batches)
            for runtime, over_anchor in (("onnxruntime", measured[f"ort {r:g}"]),
                                         ("eager", measured[f"eager {r:g}"] / measured["anchor eager"])):
                rows.append({"keep_ratio": r, "batch": size, "runtime": runtime, "speedup_flops": flops_speedup,
                             "measured": over_anchor, "realised": over_anchor / flops_speedup,
                             "accuracy": found[r]["accuracy"], "mean_flops": found[r]["mean_flops"],
                             "tokens_after_last_stage": float(found[r]["decisions"].float().mean())})
        rows.append({"batch": size, "runtime": "onnxruntime over eager (anchor)", "measured": measured["anchor eager"]})
        print(f"batch {size}: timed ({time.time() - start:.0f} s)", flush=True)

    meta = {"pruned_weights": "/".join(PRUNING), "anchor_weights": "/".join(ANCHOR),
            "anchor_accuracy": found["anchor"]["accuracy"], "anchor_flops": found["anchor"]["mean_flops"],
            "scored_samples": len(evaluation), "data": args.data, "threads": 1, "min_run_time": args.min_run_time,
            "seconds": round(time.time() - start, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "deployed_token_pruning.json", rows, meta=meta)
    lines = ["| keep ratio | batch | runtime | speedup FLOPs | measured | realised | accuracy % | mean FLOPs |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        if "keep_ratio" in row:
            lines.append(f"| {row['keep_ratio']:g} | {row['batch']} | {row['runtime']} | {row['speedup_flops']:.2f} | "
                         f"{row['measured']:.2f} | **{row['realised']:.2f}** | {100 * row['accuracy']:.2f} | "
                         f"{format_flops(row['mean_flops'])} |")
    speed = ", ".join(f"batch {r['batch']}: {1 / r['measured']:.2f}x" for r in rows if "keep_ratio" not in r)
    lines.append(f"\nAnchor (static ViT, onnxruntime) on the same {len(evaluation)} images: "
                 f"{100 * found['anchor']['accuracy']:.2f}% at {format_flops(found['anchor']['mean_flops'])}; "
                 f"onnxruntime runs it faster than eager PyTorch by {speed}.")
    (args.out / "deployed_token_pruning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({k: meta[k] for k in ("anchor_accuracy", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
