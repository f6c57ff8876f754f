"""The shipped zoo on a CUDA GPU: each dynamic weight against its static network, and training steps.

Runs `dynamicnets eval --anchor` (the user's command, unchanged) for every shipped dynamic
weight beside a static network of its backbone, on the same images, once on CUDA and once on
this machine's CPU: accuracy on each device (the same weights and decisions must give the
same accuracy), the FLOPs speedup, and the measured speedups at batch 256 and batch 1 (times
of the static network over the dynamic one's, interleaved in one `compare` run per device).
It also trains each family a few dozen steps on CUDA (`dynamicnets train`, masked execution,
bf16) to check the training path and record steps per second.

The images are the seeded 5,000-image validation split of CIFAR-10 (val_size 5000, seed 0,
the split every shipped weight was validated on), written once as PNGs in the image-folder
layout so they travel without the training files:

    python benchmarks/gpu_zoo.py write-sample --data cifar10:data/cifar-10-batches-py --out gpu_sample
    python benchmarks/gpu_zoo.py run --sample gpu_sample --out OUT --device cuda    # on the GPU machine
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/gpu_zoo.py run --sample gpu_sample \\
        --out runs/gpu_zoo_cpu --device cpu --threads 1 --no-train
    python benchmarks/gpu_zoo.py table --cuda OUT --cpu runs/gpu_zoo_cpu

`table` writes `benchmarks/results/gpu_zoo.json` and `gpu_zoo.md`.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dynamicnets.cli.main import main as cli
from dynamicnets.data import load_data
from dynamicnets.profiling.report import markdown_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"

PAIRS = (
    # (model, tag, extra eval arguments, static network it replaces)
    ("resnet_exits", "cifar10", ["--budget", "70%"], "resnet20:cifar10"),
    ("convnet_aig_resnet", "cifar10", [], "resnet56:cifar10"),
    ("dynconv_resnet20", "cifar10", [], "resnet20:cifar10"),
    ("dsnet_resnet_cifar", "cifar10", [], "resnet20:cifar10"),
    ("slimmable_resnet_cifar", "cifar10", ["--budget", "60%"], "resnet20:cifar10"),
    ("resnet20_dyrelu", "cifar10_scratch", [], "resnet20:cifar10"),
    ("dynamic_vit_cifar", "cifar10_mix", [], "vit_cifar:cifar10_mix"),
    ("evit_cifar", "cifar10_mix", [], "vit_cifar:cifar10_mix"),
)
"""The anchors are shipped weights of the backbone: for the clock any weights of the static
network do (its cost does not depend on them); the cards compare accuracy with the
same-schedule anchors."""

TRAIN_CONFIGS = ("cifar10_resnet20_zoo", "cifar10_convnet_aig56_zoo", "cifar10_dynconv_resnet20_zoo",
                 "cifar10_slimmable20_zoo", "cifar10_dsnet20_zoo", "cifar10_resnet_exits_zoo",
                 "cifar10_dynamic_vit_zoo", "cifar10_evit_zoo")


def write_sample(data: str, out: Path) -> None:
    """Write the seeded validation split as `out/<label>/<position>.png` (lossless)."""
    bundle = load_data(data, val_size=5000, seed=0, augment=False)
    val = bundle.val
    if val.samples.dtype != torch.uint8:
        raise SystemExit(f"{data}: expected uint8 pixels, got {val.samples.dtype}")
    if out.exists():
        shutil.rmtree(out)
    for position, index in enumerate(val.indices.tolist()):
        label = int(val.labels[index])
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = val.samples[index].permute(1, 2, 0).numpy()
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{position:05d}.png", optimize=True)
    print(f"wrote {len(val.indices)} images of {bundle.num_classes} classes to {out}")


def _call(argv: list[str]) -> tuple[int, str, float]:
    """Run the CLI in this process; return its exit code, its output and its wall time."""
    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            code = cli(argv)
        except SystemExit as e:  # argparse errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # a crash on the device is a result to report, not the end of the run
            print(f"{type(e).__name__}: {e}")
            code = 1
    return code, buffer.getvalue(), time.perf_counter() - start


def run(sample: Path, out: Path, device: str, threads: int | None, train: bool, steps: int,
        evaluate: bool = True, only: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
           "threads": threads if threads is not None else torch.get_num_threads()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    write_json(out / "env.json", env)
    print(json.dumps(env), flush=True)
    data = f"imagefolder:{sample}"
    for model, tag, extra, anchor in PAIRS if evaluate else ():
        if only is not None and model != only:
            continue
        argv = ["eval", "--model", model, "--pretrained", tag, "--data", data, "--split", "all",
                "--device", device, "--anchor", anchor, "--json", str(out / f"eval_{model}.json"), *extra]
        if threads is not None:
            argv += ["--threads", str(threads)]
        code, text, seconds = _call(argv)
        (out / f"eval_{model}.log").write_text(text)
        print(f"eval {model}: exit {code} in {seconds:.0f} s", flush=True)
        if code:
            print(text[-2000:], flush=True)
    if not train:
        return
    records = []
    with tempfile.TemporaryDirectory() as runs:
        for config in TRAIN_CONFIGS:
            argv = ["train", "--config", str(CONFIGS / f"{config}.yaml"), f"data={data}", "val_size=1000", "epochs=1",
                    f"max_steps_per_epoch={steps}", f"device={device}", "bf16=true", f"out_dir={runs}",
                    "init_from=null", "teacher_checkpoint=null", "teacher_weight=0",
                    "progress=false", "threads=4"]
            code, text, seconds = _call(argv)
            (out / f"train_{config}.log").write_text(text)
            metrics = Path(runs) / config / "metrics.jsonl"
            row = {"config": config, "exit_code": code, "wall_seconds": seconds}
            if code == 0 and metrics.exists():
                last = json.loads(metrics.read_text().splitlines()[-1])
                row.update(steps=last.get("step"), train_loss=last.get("train_loss"),
                           epoch_seconds=last.get("epoch_seconds"), images_per_s=last.get("images_per_second"))
            records.append(row)
            print(f"train {config}: exit {code} in {seconds:.0f} s", flush=True)
            if code:
                print(text[-2000:], flush=True)
    write_json(out / "train.json", records)


def _records(path: Path):
    """The `records` of a file written by `write_json` (`None` when it is missing)."""
    if not path.exists():
        return None
    return json.loads(path.read_text())["records"]


def table(cuda: Path, cpu: Path | None) -> None:
    env = _records(cuda / "env.json")
    cpu_env = _records(cpu / "env.json") if cpu else None
    rows = []
    for model, tag, extra, anchor in PAIRS:
        on_gpu = _records(cuda / f"eval_{model}.json")
        on_cpu = _records(cpu / f"eval_{model}.json") if cpu else None
        if on_gpu is None:
            rows.append({"model": model, "tag": tag, "anchor": anchor, "rule": " ".join(extra), "error": "no result"})
            continue
        row = {"model": model, "tag": tag, "anchor": anchor, "rule": " ".join(extra) or "trained rule",
               "accuracy_cuda": on_gpu["accuracy"], "anchor_accuracy_cuda": on_gpu["anchor_accuracy"],
               "ms_per_sample_b256_cuda": on_gpu["latency_ms_per_sample"],
               "flops_speedup": on_gpu["speedup_flops_vs_anchor"],
               "measured_b256_cuda": on_gpu["speedup_measured_vs_anchor"],
               "realized_b256_cuda": on_gpu["realized_fraction_vs_anchor"],
               "measured_b1_cuda": on_gpu["speedup_vs_anchor_batch1"]}
        if on_cpu is not None:
            row.update(accuracy_cpu=on_cpu["accuracy"], measured_b256_cpu=on_cpu["speedup_measured_vs_anchor"],
                       realized_b256_cpu=on_cpu["realized_fraction_vs_anchor"],
                       measured_b1_cpu=on_cpu["speedup_vs_anchor_batch1"])
        rows.append(row)
    train = _records(cuda / "train.json") or []
    write_json(RESULTS / "gpu_zoo.json", {"env_cuda": env, "env_cpu": cpu_env, "eval": rows, "train": train},
               meta={"note": "the GPU run's machine is env_cuda; this meta describes where the table was made"})
    columns = ["model", "rule", "anchor", "accuracy_cuda", "accuracy_cpu", "flops_speedup", "measured_b256_cuda",
               "realized_b256_cuda", "measured_b1_cuda", "measured_b256_cpu", "realized_b256_cpu", "measured_b1_cpu"]
    text = [f"# The zoo on {env.get('gpu', env['device'])} (torch {env['torch']}) and on the CPU", "",
            markdown_table(rows, columns), ""]
    if train:
        text += ["Training on CUDA (masked execution, bf16, batch 128):", "",
                 markdown_table(train, ["config", "exit_code", "steps", "epoch_seconds", "images_per_s"]), ""]
    (RESULTS / "gpu_zoo.md").write_text("\n".join(text))
    print("\n".join(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("write-sample")
    p.add_argument("--data", required=True, help="cifar10:DIR")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("run")
    p.add_argument("--sample", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--only", default=None, help="evaluate this model alone")
    p.add_argument("--steps", type=int, default=30, help="training steps per family")
    p = sub.add_parser("table")
    p.add_argument("--cuda", type=Path, required=True)
    p.add_argument("--cpu", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "write-sample":
        write_sample(args.data, args.out)
    elif args.command == "run":
        run(args.sample, args.out, args.device, args.threads, not args.no_train, args.steps, not args.no_eval,
            args.only)
    else:
        table(args.cuda, args.cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
