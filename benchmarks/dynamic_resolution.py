"""Dynamic resolution per sample on CIFAR-10: accuracy, FLOPs and measured speed (smoke scale).

The baseline is the shipped `resnet20` CIFAR-10 weights (60 epochs on the seeded 45k/5k
split, 90.88% on the 5k). `dynamic_resolution_resnet` (ResNet-20, resolutions 16/24/32, a
BatchNorm per resolution) starts from the same weights (each BatchNorm copied into every
resolution's; the predictor is new) and is fine-tuned for `--max-steps` steps (SGD nesterov,
lr `--lr`, cosine, wd 5e-4, batch 128, crop + flip, seed 0; Gumbel-softmax + cost loss
toward `--target` of the full cost, every resolution trained each step). The shared
CIFAR-10 has no test batch, so the 5k split scores: its first `--calib` images calibrate the
policies, the next `--score` images score every row.

Rows (`model`): `resnet20` (the static baseline); the dynamic model with every sample forced
to one resolution (`forced 16/24/32`); with the predictor's argmax (`argmax`); with a
`ResolutionPolicy` calibrated to a mean-FLOPs budget (`budget 0.35/0.5/0.75` of
`resnet20`'s FLOPs). Each has `accuracy`, `mean_flops` and `speedup_flops` (resnet20 FLOPs
over the row's), and, at batch sizes 1 and 256 in the same run, `speedup_measured`
(resnet20's time over the row's on the same images, timed interleaved by
`dynamicnets.profiling.latency.compare`, compact execution, channels-last, one thread).

    python benchmarks/dynamic_resolution.py                 # 300 fine-tuning steps
    # script check (writes benchmarks/results: do not commit those)
    python benchmarks/dynamic_resolution.py --max-steps 2 --calib 256 --score 256 --batch1-samples 4 \
        --min-run-time 0.05 --rounds 1 --out-dir /tmp/dr_smoke

Writes benchmarks/results/dynamic_resolution.{json,md}; checkpoints in runs/bench/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.inference import ResolutionPolicy, calibrate_resolution_policy
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.pipelines.early_exit import timed_batches
from dynamicnets.pipelines.resolution import run_case, score_case
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.models import create_model
from dynamicnets.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = "cifar10:" + str(ROOT / "data" / "cifar-10-batches-py")
RESULTS = ROOT / "benchmarks" / "results"
RESOLUTIONS = (16, 24, 32)
BUDGETS = (0.35, 0.5, 0.75)


def finetune(name: str, model, args: dict, opts) -> Path:
    config = TrainConfig(
        name=name, model="dynamic_resolution_resnet", model_args=args, data=opts.data, val_size=5000, epochs=1,
        batch_size=128, optimizer="sgd", lr=opts.lr, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="cosine", channels_last=True, seed=0, out_dir=opts.out_dir, resume=True, threads=opts.threads,
        progress=sys.stderr.isatty(), max_steps_per_epoch=opts.max_steps)
    start = time.perf_counter()
    result = Trainer(config, model=model).fit()
    print(f"{name}: val accuracy {result.get('val_accuracy')} ({time.perf_counter() - start:.0f} s)", flush=True)
    return Path(opts.out_dir) / name / "last.pt"


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--max-steps", type=int, default=300, help="fine-tuning steps")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--target", type=float, default=0.5, help="training cost target, a fraction of the full cost")
    parser.add_argument("--calib", type=int, default=1000, help="validation images that calibrate the policies")
    parser.add_argument("--score", type=int, default=4000, help="validation images that score every row")
    parser.add_argument("--batch1-samples", type=int, default=64, help="images timed one by one")
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    start = time.perf_counter()
    plain = create_model("resnet20", pretrained="cifar10").eval()
    args = {"resolutions": list(RESOLUTIONS), "target_flops_ratio": opts.target}
    torch.manual_seed(0)
    start_model = create_model("dynamic_resolution_resnet", **args)
    start_model.backbone.load_state_dict(plain.state_dict())
    dyn_path = finetune(f"cifar10_dynres20_from_zoo_s{opts.max_steps}_lr{opts.lr}_t{opts.target}", start_model,
                        args, opts)
    train_seconds = time.perf_counter() - start
    dyn, _ = load_trained_model(dyn_path)
    dyn, plain = dyn.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)

    val = load_data(opts.data, val_size=5000, seed=0, augment=False).val
    calib = Subset(val, range(opts.calib))
    scored = Subset(val, range(opts.calib, min(opts.calib + opts.score, len(val))))
    loader = make_eval_loader(scored, 256)
    calib_x = torch.cat([channels_last(x) for x, _ in make_eval_loader(calib, 256)])
    plain_flops = float(plain.flops((3, 32, 32)))
    cases = {"resnet20": (plain, {})}
    for i, r in enumerate(RESOLUTIONS):
        cases[f"forced {r}"] = (dyn, {"resolution_index": i})
    cases["argmax"] = (dyn, {})
    policies = {}
    for fraction in BUDGETS:
        policies[fraction] = calibrate_resolution_policy(dyn, calib_x, budget_flops=fraction * plain_flops)
        cases[f"budget {fraction}"] = (dyn, {"policy": policies[fraction]})

    rows = []
    scores = {name: score_case(model, loader, memory_format=torch.channels_last, **kw)
              for name, (model, kw) in cases.items()}
    for batch_size, samples in ((256, 256), (1, opts.batch1_samples)):
        batches = [channels_last(b) for b in timed_batches(scored, samples, batch_size)]
        fns = {name: (lambda m=model, k=kw: run_case(m, batches, **k)) for name, (model, kw) in cases.items()}
        timing = compare(fns, threads=opts.threads, min_run_time=opts.min_run_time, rounds=opts.rounds)
        for name in cases:
            rows.append({"model": name, "batch_size": batch_size, **scores[name],
                         "speedup_flops": plain_flops / scores[name]["mean_flops"],
                         "speedup_measured": ratio(timing, "resnet20", name),
                         "ms_per_sample": timing[name].median_ms / samples,
                         "policy": policies[float(name.split()[1])].to_dict() if name.startswith("budget") else None})
        for r in rows[-len(cases):]:
            print({k: r[k] for k in ("model", "batch_size", "accuracy", "mean_flops", "speedup_flops",
                                     "speedup_measured")}, flush=True)

    meta = {"threads": opts.threads, "finetune_steps": opts.max_steps, "lr": opts.lr,
            "train_seconds": train_seconds, "target_flops_ratio": opts.target,
            "schedule": f"resnet20: the shipped CIFAR-10 weights; dynamic: those weights + a new predictor, "
                        f"{opts.max_steps} steps SGD nesterov lr {opts.lr} cosine wd 5e-4 batch 128 crop+flip",
            "evaluation": f"seeded 5k validation split: first {opts.calib} calibrate the policies, the other "
                          f"{len(scored)} score; compact execution, eval mode",
            "timing": f"batch 256: one batch; batch 1: {opts.batch1_samples} images one by one; interleaved rounds, "
                      "channels-last, resnet20 timed in the same run",
            "flops_note": "resizing (bilinear, antialiased) is not counted, like pooling; the predictor is",
            "command": "python benchmarks/dynamic_resolution.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / "dynamic_resolution.json", rows, meta)
    table = markdown_table(
        [{k: r.get(k) for k in ("model", "batch_size", "accuracy", "mean_flops", "speedup_flops", "speedup_measured",
                                "resolution_histogram")} for r in rows],
        floatfmt={"accuracy": ".4f", "mean_flops": ".4g", "speedup_flops": ".2f", "speedup_measured": ".2f"})
    (RESULTS / "dynamic_resolution.md").write_text(
        f"Schedule: {meta['schedule']}. Evaluation: {meta['evaluation']}. Timing: {meta['timing']}.\n\n{table}\n")
    print((RESULTS / "dynamic_resolution.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
