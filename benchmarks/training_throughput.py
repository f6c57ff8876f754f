"""Training throughput (images/s) of the model zoo on one CPU thread, per Trainer setting.

Times the real training step of `dynamicnets.training.Trainer` -- data loading and
augmentation from the real CIFAR-10 pipeline, forward, loss with the aux losses,
backward, optimizer step -- for `--steps` steps per round after `--warmup` steps, batch
128, one thread. The settings of one model are interleaved (round 1: A, B, C; round 2:
A, B, C; ...) so that load from other processes hits them alike; `ratio_to_default` is
images/s over the `default` setting's from the same rounds, `round_ratios` the same per
round (their spread shows the noise). On a shared core the process's own CPU time is far
less disturbed by the load than the wall clock: `cpu_images_per_s` and
`cpu_ratio_to_default` are the same figures over `time.process_time()`.

Settings (`--settings`, comma-separated):

- `default`: `TrainConfig` defaults (NCHW layout, the optimizer's for-loop kernel);
- `channels_last`: `channels_last: true`;
- `fused_sgd`: `optimizer_impl: fused`;
- `channels_last+fused_sgd`: both;
- `channels_last+compile`: channels-last with the model's forward and backward compiled
  by `torch.compile` (inductor); the compile time (the warm-up minus the warm-up steps at
  the measured speed) is recorded as `compile_seconds` with the number of steps it takes
  to pay for itself, `break_even_steps`;
- `mkldnn_off`: the default with `torch.backends.mkldnn` disabled.

Each record also holds the data time: `data_ms_per_batch`, the loader alone drawing
`--steps` batches in every round, and `data_fraction` of the setting's step; and
`optimizer_ms`, the median time of the setting's `optimizer.step()` alone.

The compile time is wall-clock, so on a busy core it is inflated like the steps are; run
with an empty `TORCHINDUCTOR_CACHE_DIR` for a cold compile (a warm cache replays it).

Writes `benchmarks/results/training_throughput.json` (records `model, setting,
images_per_s, ratio_to_default, threads, batch_size, step_ms, round_ratios, ...`) and
`training_throughput.md` (`--out` elsewhere: `training_throughput_compile.json` holds
`--models resnet20 --settings channels_last,channels_last+compile`,
`training_throughput_mkldnn.json` `--models resnet20 --settings default,mkldnn_off`).
`DIR` is the folder of the CIFAR-10 python batches; pin it to one core on a shared machine:

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/training_throughput.py --data cifar10:DIR
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dynamicnets.data import load_data
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {
    "resnet20": {},
    "resnet56": {},
    "msdnet_cifar": {},
    "convnet_aig_resnet": {"depth": 56},
    "slimmable_resnet_cifar": {},
    "vit_cifar": {},
}
SETTINGS = {
    "default": {},
    "channels_last": {"channels_last": True},
    "fused_sgd": {"optimizer_impl": "fused"},
    "channels_last+fused_sgd": {"channels_last": True, "optimizer_impl": "fused"},
    "channels_last+compile": {"channels_last": True},
    "mkldnn_off": {},
    "channels_last+bf16": {"channels_last": True, "bf16": True},
    "bf16": {"bf16": True},
}
DEFAULT_SETTINGS = ("default", "channels_last", "fused_sgd", "channels_last+fused_sgd")


def build_trainer(model: str, model_args: dict, setting: str, bundle, data: str, batch_size: int,
                  threads: int, out_dir: str) -> Trainer:
    """A Trainer of `model` under `setting` (the compiled model runs as the training model
    only, so `trainer.model` and its state-dict keys stay those of the plain model)."""
    config = TrainConfig(name=setting.replace("+", "_"), model=model, model_args=model_args, data=data,
                         batch_size=batch_size, threads=threads, progress=False, out_dir=out_dir,
                         device="cpu", **SETTINGS[setting])
    trainer = Trainer(config, bundle=bundle)
    if setting.endswith("+compile"):
        trainer._train_model = torch.compile(trainer.model)
    return trainer


def backend_flags(setting: str):
    """The global backend switches of `setting`, as a context."""
    if setting == "mkldnn_off":
        return torch.backends.mkldnn.flags(enabled=False)
    return contextlib.nullcontext()


def run_steps(trainer: Trainer, setting: str, steps: int, epoch: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds of this process for `steps` training steps of `trainer`
    (loader included)."""
    trainer.steps_per_epoch = steps
    with backend_flags(setting):
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer._train_epoch(epoch)
        return time.perf_counter() - start, time.process_time() - cpu_start


def data_seconds(trainer: Trainer, steps: int) -> float:
    """Seconds for the training loader alone to yield `steps` batches (after the first)."""
    it = iter(trainer.train_loader)
    next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return time.perf_counter() - start


def optimizer_ms(trainer: Trainer, repeats: int = 5, steps: int = 10) -> float:
    """Median ms of one `optimizer.step()` on the gradients the last training step left
    (the weights move on; call it after the timed rounds)."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            trainer.optimizer.step()
        runs.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(runs)


def measure_model(model: str, model_args: dict, settings: list[str], bundle, args, out_dir: str) -> list[dict]:
    """Interleaved rounds of every setting of one model; one record per setting."""
    trainers, warmup_s = {}, {}
    for setting in settings:
        trainers[setting] = build_trainer(model, model_args, setting, bundle, args.data, args.batch_size,
                                          args.threads, out_dir)
        warmup_s[setting] = run_steps(trainers[setting], setting, args.warmup, 0)[0]
        print(f"{model} {setting}: warm-up {warmup_s[setting]:.1f}s", flush=True)
    times = {s: [] for s in settings}
    cpu = {s: [] for s in settings}
    data = []
    for r in range(args.rounds):
        for setting in settings:
            wall, cpu_s = run_steps(trainers[setting], setting, args.steps, r + 1)
            times[setting].append(wall)
            cpu[setting].append(cpu_s)
        data.append(data_seconds(trainers[settings[0]], args.steps))
        print(f"{model} round {r + 1}: " + ", ".join(f"{s} {times[s][-1] / args.steps:.2f}s/step"
                                                     for s in settings), flush=True)
    opt_ms = {s: optimizer_ms(trainers[s]) for s in settings}
    images = args.steps * args.batch_size * args.rounds
    base = times[settings[0]]
    data_ms = 1e3 * sum(data) / (args.steps * args.rounds)
    records = []
    for setting in settings:
        step_s = sum(times[setting]) / (args.steps * args.rounds)
        record = {
            "model": model,
            "setting": setting,
            "images_per_s": images / sum(times[setting]),
            "ratio_to_default": sum(base) / sum(times[setting]),
            "round_ratios": [b / t for b, t in zip(base, times[setting])],
            "cpu_images_per_s": images / sum(cpu[setting]),
            "cpu_ratio_to_default": sum(cpu[settings[0]]) / sum(cpu[setting]),
            "threads": args.threads,
            "batch_size": args.batch_size,
            "step_ms": 1e3 * step_s,
            "data_ms_per_batch": data_ms,
            "data_fraction": data_ms / (1e3 * step_s),
            "optimizer_ms": opt_ms[setting],
            "warmup_seconds": warmup_s[setting],
        }
        if setting.endswith("+compile"):
            compile_s = max(0.0, warmup_s[setting] - args.warmup * step_s)
            saved_s = sum(base) / (args.steps * args.rounds) - step_s
            record["compile_seconds"] = compile_s
            record["break_even_steps"] = compile_s / saved_s if saved_s > 0 else None
        records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data spec, e.g. cifar10:DIR")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                        help=f"comma-separated, the first is the baseline; from {list(SETTINGS)}")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compiles, if any)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "training_throughput.json")
    args = parser.parse_args()
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    models = args.models.split(",")
    if unknown or any(m not in MODELS for m in models):
        parser.error(f"unknown settings {unknown} or models {models}; settings: {list(SETTINGS)}, "
                     f"models: {list(MODELS)}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    bundle = load_data(args.data, val_size=5000, seed=0, augment=True)
    records = []
    with tempfile.TemporaryDirectory() as out_dir:  # the Trainers write nothing while only stepping
        for model in models:
            records += measure_model(model, MODELS[model], settings, bundle, args, out_dir)
    meta = {
        "threads": args.threads,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "settings": settings,
        "load_average_1_5_15_min_before": load_before,
        "load_average_1_5_15_min_after": os.getloadavg(),
        "wall_seconds": time.perf_counter() - start,
        "timed": "wall clock and process CPU time of Trainer._train_epoch: loader + augmentation, forward, loss incl. aux, backward, optimizer "
                 "step, scheduler; images/s over all rounds",
    }
    write_json(args.out, records, meta)
    for r in records:
        r["round_ratios"] = " ".join(f"{x:.2f}" for x in r["round_ratios"])
    columns = ["model", "setting", "images_per_s", "ratio_to_default", "round_ratios", "cpu_images_per_s",
               "cpu_ratio_to_default", "step_ms",
               "data_ms_per_batch", "data_fraction", "optimizer_ms"]
    if any("compile_seconds" in r for r in records):
        columns += ["compile_seconds", "break_even_steps"]
    formats = {"images_per_s": ".1f", "ratio_to_default": ".3f", "cpu_images_per_s": ".1f", "cpu_ratio_to_default": ".3f", "step_ms": ".0f", "data_ms_per_batch": ".1f",
               "data_fraction": ".3f", "optimizer_ms": ".2f", "compile_seconds": ".0f", "break_even_steps": ".0f"}
    table = markdown_table(records, columns, formats)
    args.out.with_suffix(".md").write_text(
        f"Training images/s, batch {args.batch_size}, {args.threads} thread(s), {args.steps} steps x "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up step(s); load average before/after "
        f"{load_before[0]:.1f}/{meta['load_average_1_5_15_min_after'][0]:.1f} on 2 cores "
        f"(`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/training_throughput.py --data cifar10:DIR "
        f"--models {args.models} --settings {args.settings} --steps {args.steps} --rounds {args.rounds}`)\n\n"
        + table + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()
