"""Dynamic parameters and features on CIFAR-10: MobileNetV2 x0.35.

Four networks, one schedule: static convs with ReLU (the baseline), DY-ReLU-B, CondConv
(K=4) and DY-Conv (K=4, softmax temperature annealed 30 -> 1 over the first epoch, as the
paper does over its first epochs). MobileNetV2 x0.35 with the paper's stride-2 stem
(`stem_stride=2`, 2x2 final features): at stride 1 one training step of batch 128 took
about 3 s here, 11 s with DY-ReLU-B, too slow for this machine's budget.

CPU-feasible schedule: `--epochs` epochs of `--steps` steps of batch 128 (default 4 x 176,
two passes over the 45k training images), SGD nesterov lr 0.1 cosine, wd 4e-5
(MobileNetV2's), crop + flip, seed 0; scored on the seeded 5k validation split (45k/5k;
the shared CIFAR-10 has no test batch). The papers train 150-300 epochs: this shows the
direction after a short schedule, no more.

    python benchmarks/dynamic_params_cifar.py
    # smoke run of the script itself (writes benchmarks/results: do not commit those)
    python benchmarks/dynamic_params_cifar.py --epochs 1 --steps 2 --out-dir /tmp/dp_smoke

Writes benchmarks/results/dynamic_params_cifar.{json,md}; checkpoints in runs/bench/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dynamicnets import create_model
from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer
from dynamicnets.training.evaluate import evaluate, to_channels_last

ROOT = Path(__file__).resolve().parents[1]
DATA = "cifar10:" + str(ROOT / "data" / "cifar-10-batches-py")
RESULTS = ROOT / "benchmarks" / "results"
BASE = {"width_mult": 0.35, "stem_stride": 2}
VARIANTS = {  # name -> (model arguments, anneal the temperature)
    "static_relu": ({}, False),
    "dyrelu_b": ({"activation": "dyrelu_b"}, False),
    "condconv": ({"conv": "condconv", "num_experts": 4}, False),
    "dyconv": ({"conv": "dyconv", "num_experts": 4}, True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=176, help="optimizer steps per epoch (batch 128)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    val = make_eval_loader(load_data(DATA, val_size=5000, seed=0, augment=False).val, 256)
    rows = []
    for name in opts.variants:
        extra, anneal = VARIANTS[name]
        args = {**BASE, **extra}
        config = TrainConfig(
            name=f"cifar10_mbv2_035s2_{name}_e{opts.epochs}x{opts.steps}", model="mobilenetv2_cifar", model_args=args,
            data=DATA, val_size=5000, epochs=opts.epochs, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
            nesterov=True, weight_decay=4e-5, schedule="cosine", channels_last=True, seed=0,
            out_dir=opts.out_dir, resume=True, threads=opts.threads, progress=sys.stderr.isatty(),
            max_steps_per_epoch=opts.steps,
            temperature_schedule={"kind": "linear", "start": 30.0, "end": 1.0, "epochs": 1} if anneal else None)
        start = time.perf_counter()
        Trainer(config).fit()
        seconds = time.perf_counter() - start
        model, ckpt = load_trained_model(Path(opts.out_dir) / config.name / "last.pt")
        metrics = evaluate(to_channels_last(model), val, "cpu", channels_last=True)
        shapes = create_model("mobilenetv2_cifar", device="meta", **args)
        rows.append({
            "variant": name, "model_args": args, "accuracy": metrics["accuracy"], "val_loss": metrics["loss"],
            "flops": shapes.flops((3, 32, 32)), "params": sum(p.numel() for p in shapes.parameters()),
            "train_seconds_this_run": seconds,
            "train_images_per_second": ckpt["history"][-1]["images_per_second"],
        })
        print(rows[-1], flush=True)
    base = next((r for r in rows if r["variant"] == "static_relu"), None)
    for r in rows:
        r["accuracy_gain_vs_static"] = None if base is None else r["accuracy"] - base["accuracy"]
        r["flops_ratio_vs_static"] = None if base is None else r["flops"] / base["flops"]
    meta = {"threads": opts.threads,
            "schedule": f"{opts.epochs} epochs x {opts.steps} steps of batch 128, SGD nesterov lr 0.1 cosine, "
                        f"wd 4e-5, crop+flip; DY-Conv temperature 30 -> 1 linearly over the first epoch",
            "network": "mobilenetv2_cifar width_mult 0.35 stem_stride 2",
            "evaluation": "seeded 5k validation split (45k/5k), eval mode",
            "command": "python benchmarks/dynamic_params_cifar.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / "dynamic_params_cifar.json", rows, meta)
    table = markdown_table(
        [{k: r[k] for k in ("variant", "accuracy", "accuracy_gain_vs_static", "params", "flops",
                            "flops_ratio_vs_static", "train_images_per_second")} for r in rows],
        floatfmt={"accuracy": ".4f", "accuracy_gain_vs_static": "+.4f", "flops_ratio_vs_static": ".3f",
                  "train_images_per_second": ".0f"})
    (RESULTS / "dynamic_params_cifar.md").write_text(f"{meta['network']}; {meta['schedule']}.\n\n{table}\n")
    print((RESULTS / "dynamic_params_cifar.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
