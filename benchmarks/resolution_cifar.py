"""Resolution-adaptive networks on CIFAR-10: RANet and dynamic resolution beside MSDNet and
the static ResNets, one schedule for all.

Every model is trained from scratch with the same recipe (`--epochs` epochs, SGD nesterov
lr 0.1 cosine, weight decay 5e-4, batch 128, random crop + flip, channels-last, seed 0, on
the seeded 45k/5k split): `resnet20`, `resnet32`, `resnet56` (static anchors),
`msdnet_cifar`, `ranet_cifar` (early exits) and `dynamic_resolution_resnet` (ResNet-20 at
16/24/32 pixels, Gumbel-softmax predictor, cost loss toward half the full cost).

    python benchmarks/resolution_cifar.py --epochs 5 --train-only   # train (resumable)
    python benchmarks/resolution_cifar.py --epochs 5                # train what is missing, evaluate

Checkpoints go to `--out-dir` (default runs/bench; a rerun resumes or reuses finished
trainings).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dynamicnets.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = "cifar10:" + str(ROOT.parent / "shared" / "data" / "cifar-10-batches-py")
DYNAMIC_RESOLUTION = {"depth": 20, "resolutions": [16, 24, 32], "target_flops_ratio": 0.5, "cost_weight": 1.0}
MODELS = {
    "msdnet_cifar": {},
    "ranet_cifar": {},
    "dynamic_resolution_resnet": DYNAMIC_RESOLUTION,
    "resnet20": {},
    "resnet56": {},
    "resnet32": {},
}
SCHEDULE = "SGD nesterov lr 0.1 cosine, wd 5e-4, batch 128, crop+flip, channels_last, seed 0, from scratch"


def run_name(model: str, epochs: int) -> str:
    return f"cifar10_{model}_e{epochs}"


def train_all(epochs: int, out_dir: Path, threads: int) -> dict[str, Path]:
    """Train (or resume, or reuse) every model of `MODELS`; returns their `last.pt` paths."""
    checkpoints = {}
    for model, args in MODELS.items():
        name = run_name(model, epochs)
        config = TrainConfig(
            name=name, model=model, model_args=args, data=DATA, val_size=5000, epochs=epochs,
            batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
            schedule="cosine", channels_last=True, seed=0, out_dir=str(out_dir), resume=True,
            threads=threads, progress=sys.stderr.isatty())
        start = time.perf_counter()
        result = Trainer(config).fit()
        print(f"{name}: val accuracy {result.get('val_accuracy')} ({time.perf_counter() - start:.0f} s)", flush=True)
        checkpoints[model] = out_dir / name / "last.pt"
    return checkpoints


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--train-only", action="store_true", help="train (or resume) every model, then stop")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    train_all(opts.epochs, Path(opts.out_dir), opts.threads)
    if opts.train_only:
        return 0
    raise SystemExit("evaluation: not written yet")


if __name__ == "__main__":
    raise SystemExit(main())
