"""Resolution-adaptive networks on CIFAR-10: RANet and dynamic resolution beside MSDNet and
the static ResNets, one schedule for all.

Every model is trained from scratch with the same recipe (`--epochs` epochs, SGD nesterov
lr 0.1 cosine, weight decay 5e-4, batch 128, random crop + flip, channels-last, seed 0, on
the seeded 45k/5k split): `resnet20`, `resnet32`, `resnet56` (static anchors),
`msdnet_cifar`, `ranet_cifar` (early exits) and `dynamic_resolution_resnet` (ResNet-20 at
16/24/32 pixels, Gumbel-softmax predictor, cost loss toward half the full cost).

Evaluation, on the seeded 5k validation split cut into a calibration half and an evaluation
half (`split_for_calibration`, seed 0), every model in channels-last, one thread:

- statics: accuracy and FLOPs of resnet20/32/56 on the evaluation half;
- MSDNet and RANet: accuracy and cost of every exit (anytime), and the budgeted-batch
  curve: max-probability thresholds fitted on the calibration half to `--budgets` mean-FLOPs
  budgets evenly spaced from the first exit's cost to the last's, scored on the evaluation
  half by the compact executor, timed against the same model's full network (interleaved,
  same run) at batch 256 (one batch) and batch 1 (64 images one by one);
- dynamic resolution: every sample forced to 16/24/32, the predictor's argmax, and a
  `ResolutionPolicy` calibrated (on the calibration half) to each of `BUDGETS` x resnet20's
  FLOPs; all these and resnet20 timed together, interleaved, on the same images at batch
  256 and 1; speedups against resnet20 (static anchor of the same depth and schedule) and
  against the model's own forced-32 path.

Every measured record carries `model`, `batch_size`, `accuracy`, `mean_flops` (evaluation
half), `speedup_flops` (over exactly the timed samples), `speedup_measured` and
`realized_fraction` (measured / FLOPs). `targets` checks realized >= 0.85 per point and
batch size, and each dynamic model's accuracy against the static frontier at its cost
(`profiling.frontier`, unpaired noise over the evaluation half).

    python benchmarks/resolution_cifar.py --epochs 5 --train-only   # train (resumable)
    python benchmarks/resolution_cifar.py --epochs 5                # train what is missing, evaluate
    python benchmarks/resolution_cifar.py --epochs 5 --eval-only    # evaluate finished trainings only
    # script check (never commit its results)
    python benchmarks/resolution_cifar.py --epochs 1 --max-steps-per-epoch 2 --out-dir /tmp/rc_smoke \\
        --results /tmp/rc_smoke/results --budgets 3 --min-run-time 0.05 --rounds 1

Checkpoints go to `--out-dir` (default runs/bench; a rerun resumes or reuses finished
trainings). Writes `--results`/resolution_cifar.{json,md,png} and
resolution_cifar_histogram.png (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.errors import ConfigError, DynamicNetsError
from dynamicnets.inference import calibrate_resolution_policy
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.pipelines.early_exit import split_for_calibration, timed_batches
from dynamicnets.pipelines.resolution import score_case, time_cases
from dynamicnets.pipelines.zoo_timing import BATCH1_SAMPLES, TIMED_BATCH_SIZES
from dynamicnets.pipelines.zoo_trade_off import measure_trade_off
from dynamicnets.profiling.frontier import FrontierPoint, compare_to_frontier, verdict
from dynamicnets.profiling.plots import plot_accuracy_vs_flops, plot_grouped_bars
from dynamicnets.profiling.report import format_flops, markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = "cifar10:" + str(ROOT / "data" / "cifar-10-batches-py")
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
STATICS = ("resnet20", "resnet32", "resnet56")
EARLY_EXIT = ("msdnet_cifar", "ranet_cifar")
DYNRES = "dynamic_resolution_resnet"
ANCHOR = "resnet20"
BUDGETS = (0.3, 0.375, 0.45, 0.6)
"""Dynamic-resolution policy budgets, fractions of resnet20's FLOPs."""
REALIZED_TARGET = 0.85
CL = torch.channels_last
DEFAULT_OUT = ROOT / "runs" / "bench"


def run_name(model: str, epochs: int) -> str:
    return f"cifar10_{model}_e{epochs}"


def train_all(epochs: int, out_dir: Path, threads: int, max_steps_per_epoch: int | None = None) -> dict[str, Path]:
    """Train (or resume, or reuse) every model of `MODELS`; returns their `last.pt` paths."""
    checkpoints = {}
    for model, args in MODELS.items():
        name = run_name(model, epochs)
        config = TrainConfig(
            name=name, model=model, model_args=args, data=DATA, val_size=5000, epochs=epochs,
            batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
            schedule="cosine", channels_last=True, seed=0, out_dir=str(out_dir), resume=True,
            threads=threads, progress=sys.stderr.isatty(), max_steps_per_epoch=max_steps_per_epoch)
        start = time.perf_counter()
        result = Trainer(config).fit()
        print(f"{name}: val accuracy {result.get('val_accuracy')} ({time.perf_counter() - start:.0f} s)", flush=True)
        checkpoints[model] = out_dir / name / "last.pt"
    return checkpoints


# -- evaluation ---------------------------------------------------------------------------------


def load(path: Path, epochs: int, max_steps: int | None) -> tuple[torch.nn.Module, int]:
    """The trained model in eval mode and channels-last, and the epochs it finished."""
    model, ckpt = load_trained_model(path)
    if max_steps is None and ckpt["epoch"] < epochs:
        raise ConfigError(f"{path}: trained {ckpt['epoch']} of {epochs} epochs; finish the training first")
    return model.eval().to(memory_format=CL), int(ckpt["epoch"])


def early_exit_records(name: str, trade: dict) -> list[dict]:
    """One measured record per budget and timed batch size of a `measure_trade_off` curve."""
    records = []
    for row in trade["curve"]:
        for size in TIMED_BATCH_SIZES:
            flops, measured = row[f"speedup_flops_b{size}"], row[f"speedup_measured_b{size}"]
            records.append({
                "model": name, "case": f"budget {format_flops(row['budget_flops'])}", "batch_size": size,
                "accuracy": row["accuracy"], "mean_flops": row["mean_flops"], "speedup_flops": flops,
                "speedup_measured": measured, "realized_fraction": measured / flops,
                "speedup_flops_eval": row["speedup_flops"], "anchor": f"{name} full network",
                "budget_flops": row["budget_flops"], "thresholds": row["thresholds"],
                "exit_histogram": row["exit_histogram"],
                "timed_samples": BATCH1_SAMPLES if size == 1 else size})
    return records


def dynamic_resolution(models: dict, calibration, evaluation, opts) -> dict:
    """Forced, argmax and calibrated-policy cases of the dynamic-resolution model, with
    resnet20, scored on `evaluation` and timed together at every batch size."""
    dyn, plain = models[DYNRES], models[ANCHOR]
    shape = tuple(dyn.default_input_shape)
    plain_flops = float(plain.flops(shape))
    cases = {ANCHOR: (plain, {})}
    cases.update({f"forced {r}": (dyn, {"resolution_index": i}) for i, r in enumerate(dyn.resolutions)})
    cases["argmax"] = (dyn, {})
    policies = {}
    for fraction in BUDGETS:
        policies[fraction] = calibrate_resolution_policy(dyn, make_eval_loader(calibration, 256),
                                                         budget_flops=fraction * plain_flops)
        cases[f"budget {fraction}"] = (dyn, {"policy": policies[fraction]})
    scores = {name: score_case(model, make_eval_loader(evaluation, 256), memory_format=CL, **case)
              for name, (model, case) in cases.items()}
    own_full = f"forced {dyn.resolutions[-1]}"
    records = []
    for size in TIMED_BATCH_SIZES:
        samples = BATCH1_SAMPLES if size == 1 else size
        batches = [b.contiguous(memory_format=CL) for b in timed_batches(evaluation, samples, 256)]
        batches = [b[i:i + 1] for b in batches for i in range(b.shape[0])] if size == 1 else batches
        timing = time_cases(cases, batches, threads=opts.threads, min_run_time=opts.min_run_time, rounds=opts.rounds)
        for name in cases:
            t, anchor, own = timing[name], timing[ANCHOR], timing[own_full]
            flops_speedup = anchor["mean_flops"] / t["mean_flops"]
            measured = anchor["median_ms"] / t["median_ms"]
            own_flops, own_measured = own["mean_flops"] / t["mean_flops"], own["median_ms"] / t["median_ms"]
            records.append({
                "model": ANCHOR if name == ANCHOR else DYNRES, "case": name, "batch_size": size,
                "accuracy": scores[name]["accuracy"], "mean_flops": scores[name]["mean_flops"],
                "speedup_flops": flops_speedup, "speedup_measured": measured,
                "realized_fraction": measured / flops_speedup,
                "speedup_flops_eval": plain_flops / scores[name]["mean_flops"], "anchor": ANCHOR,
                "speedup_flops_vs_own_32": own_flops, "speedup_measured_vs_own_32": own_measured,
                "realized_fraction_vs_own_32": own_measured / own_flops,
                "resolution_histogram": scores[name]["resolution_histogram"],
                "timed_samples": t["timed_samples"], "timed_mean_flops": t["mean_flops"],
                "ms_per_sample": t["ms_per_sample"],
                "policy": policies[float(name.split()[1])].to_dict() if name.startswith("budget") else None})
            print({k: records[-1][k] for k in ("model", "case", "batch_size", "accuracy", "speedup_flops",
                                               "speedup_measured")}, flush=True)
    return {"records": records, "resolution_costs": dyn.resolution_costs(shape), "resolutions": list(dyn.resolutions),
            "anchor_flops": plain_flops}


def evaluate_all(checkpoints: dict[str, Path], opts) -> dict:
    models, epochs_done = {}, {}
    for name, path in checkpoints.items():
        models[name], epochs_done[name] = load(path, opts.epochs, opts.max_steps_per_epoch)
    bundle = load_data(DATA, val_size=5000, seed=0, augment=False)
    calibration, evaluation = split_for_calibration(bundle.val, seed=0)
    shape = tuple(bundle.input_shape)
    statics = []
    for name in STATICS:
        scored = score_case(models[name], make_eval_loader(evaluation, 256), memory_format=CL)
        statics.append({"model": name, "accuracy": scored["accuracy"], "mean_flops": scored["mean_flops"]})
        print(statics[-1], flush=True)
    measured, anytime, exit_costs = [], {}, {}
    for name in EARLY_EXIT:
        trade = measure_trade_off(models[name], bundle.val, shape, budgets=opts.budgets, seed=0,
                                  threads=opts.threads, min_run_time=opts.min_run_time, memory_format=CL)
        anytime[name], exit_costs[name] = trade["anytime"], trade["exit_costs"]
        measured += early_exit_records(name, trade)
        for r in measured[-2 * opts.budgets:]:
            print({k: r[k] for k in ("model", "case", "batch_size", "accuracy", "speedup_flops", "speedup_measured")},
                  flush=True)
    dynres = dynamic_resolution(models, calibration, evaluation, opts)
    measured += dynres.pop("records")
    return {"statics": statics, "anytime": anytime, "exit_costs": exit_costs, "measured": measured, **dynres,
            "epochs_trained": epochs_done, "calibration_samples": len(calibration),
            "evaluation_samples": len(evaluation)}


def operating_points(result: dict, model: str) -> list[dict]:
    """The model's dynamic operating points (one per budget; argmax too for dynamic resolution),
    from its batch-256 records."""
    return [r for r in result["measured"] if r["model"] == model and r["batch_size"] == 256
            and (r["case"].startswith("budget") or r["case"] == "argmax")]


def targets(result: dict) -> dict:
    """Per dynamic model: realized >= 0.85 at every point and batch size, and accuracy against
    the static frontier (resnet20/32/56) at equal or lower FLOPs."""
    static = [FrontierPoint(s["model"], s["mean_flops"], s["accuracy"]) for s in result["statics"]]
    verdicts = {}
    for model in (*EARLY_EXIT, DYNRES):
        timed = [r for r in result["measured"] if r["model"] == model
                 and (r["case"].startswith("budget") or r["case"] == "argmax")]
        realized = [{"case": r["case"], "batch_size": r["batch_size"], "speedup_flops": r["speedup_flops"],
                     "speedup_measured": r["speedup_measured"], "realized_fraction": r["realized_fraction"],
                     "met": r["realized_fraction"] >= REALIZED_TARGET} for r in timed]
        points = operating_points(result, model)
        comparisons = compare_to_frontier(
            static, [FrontierPoint(p["case"], p["mean_flops"], p["accuracy"]) for p in points],
            samples=result["evaluation_samples"])
        verdicts[model] = {
            "realized_target": REALIZED_TARGET,
            "realized": realized,
            "realized_met": {f"batch {b}": f"{sum(x['met'] for x in realized if x['batch_size'] == b)} of "
                                           f"{sum(1 for x in realized if x['batch_size'] == b)}"
                             for b in TIMED_BATCH_SIZES},
            "vs_static": [{"case": c.point.name, "mean_flops": c.point.cost, "accuracy": c.point.accuracy,
                           "static_accuracy_at_cost": c.static_accuracy, "margin": c.margin, "noise": c.noise,
                           "wins": c.wins} for c in comparisons],
            "vs_static_verdict": verdict(comparisons, model=model, cost_name="FLOPs", format_cost=format_flops)}
    return verdicts


# -- outputs ------------------------------------------------------------------------------------

FLOATS = {"accuracy": ".4f", "speedup_flops": ".2f", "speedup_measured": ".2f", "realized_fraction": ".2f",
          "speedup_flops_vs_own_32": ".2f", "speedup_measured_vs_own_32": ".2f"}


def write_outputs(result: dict, meta: dict, out: Path) -> None:
    write_json(out / "resolution_cifar.json", result, meta)
    statics = markdown_table([{"model": s["model"], "mean_flops": format_flops(s["mean_flops"]),
                               "accuracy": s["accuracy"]} for s in result["statics"]], floatfmt=FLOATS)
    anytime = markdown_table([{"model": m, "exit": a["exit"], "flops": format_flops(a["flops"]),
                               "accuracy": a["accuracy"]} for m, rows in result["anytime"].items() for a in rows],
                             floatfmt=FLOATS)
    measured = markdown_table(
        [{"model": r["model"], "case": r["case"], "batch": r["batch_size"], "accuracy": r["accuracy"],
          "mean_flops": format_flops(r["mean_flops"]), "speedup_flops": r["speedup_flops"],
          "speedup_measured": r["speedup_measured"], "realized_fraction": r["realized_fraction"],
          "vs own 32 (flops/measured)": (f"{r['speedup_flops_vs_own_32']:.2f} / {r['speedup_measured_vs_own_32']:.2f}"
                                         if "speedup_flops_vs_own_32" in r else ""),
          "histogram": str(r.get("exit_histogram") or r.get("resolution_histogram") or "")}
         for r in result["measured"]], floatfmt=FLOATS)
    lines = [f"Schedule: {meta['schedule']}, {meta['epochs']} epochs, every model. Evaluation: {meta['evaluation']}. "
             f"Timing: {meta['timing']}. Load: {meta['load']}.", "", "Static anchors (evaluation half):", "", statics,
             "", "Anytime (each exit alone, evaluation half):", "", anytime, "",
             "Measured cases (`speedup_flops` over the timed samples; early exits against their own full "
             "network, dynamic resolution against resnet20):", "", measured, "", "Targets:", ""]
    for model, v in result["targets"].items():
        lines.append(f"- {model}: realized >= {REALIZED_TARGET}: "
                     + ", ".join(f"{k}: {n}" for k, n in v["realized_met"].items()) + f"; {v['vs_static_verdict']}")
    (out / "resolution_cifar.md").write_text("\n".join(lines) + "\n")
    dyn = [r for r in result["measured"] if r["model"] == DYNRES and r["batch_size"] == 256]
    curves = {"MSDNet budgeted (compact)": EARLY_EXIT[0], "RANet budgeted (compact)": EARLY_EXIT[1],
              "dynamic resolution (argmax + policy budgets)": DYNRES}
    plot_accuracy_vs_flops(
        {label: [(p["mean_flops"], p["accuracy"]) for p in operating_points(result, model)]
         for label, model in curves.items()},
        out / "resolution_cifar.png",
        title=f"CIFAR-10, same schedule ({meta['epochs']} epoch(s) each): accuracy vs mean FLOPs",
        static_points={s["model"]: (s["mean_flops"], s["accuracy"]) for s in result["statics"]})
    plot_grouped_bars(
        {r["case"]: r["resolution_histogram"] for r in dyn if not r["case"].startswith("forced")},
        [f"{px} px" for px in result["resolutions"]], out / "resolution_cifar_histogram.png",
        title=f"dynamic_resolution_resnet: chosen resolution ({result['evaluation_samples']} evaluation images)",
        xlabel="policy (budget = fraction of resnet20's FLOPs)", ylabel="fraction of images", normalize=True)
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT))
    parser.add_argument("--train-only", action="store_true", help="train (or resume) every model, then stop")
    parser.add_argument("--eval-only", action="store_true",
                        help="train nothing: evaluate the finished checkpoints (an error if one is missing or unfinished)")
    parser.add_argument("--max-steps-per-epoch", type=int, default=None,
                        help="smoke runs only: cap the training steps (needs a scratch --out-dir)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="folder for the outputs")
    parser.add_argument("--budgets", type=int, default=6, help="early-exit budgets, first to last exit's cost")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timed callable and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (dynamic resolution)")
    opts = parser.parse_args()
    if opts.max_steps_per_epoch is not None and Path(opts.out_dir).resolve() == DEFAULT_OUT.resolve():
        print("error: --max-steps-per-epoch: give a scratch --out-dir, not the benchmark's runs/bench", file=sys.stderr)
        return 2
    torch.set_num_threads(opts.threads)
    try:
        if opts.eval_only:
            checkpoints = {m: Path(opts.out_dir) / run_name(m, opts.epochs) / "last.pt" for m in MODELS}
        else:
            checkpoints = train_all(opts.epochs, Path(opts.out_dir), opts.threads, opts.max_steps_per_epoch)
        if opts.train_only:
            return 0
        load_before = os.getloadavg()
        start = time.perf_counter()
        result = evaluate_all(checkpoints, opts)
        seconds = time.perf_counter() - start
    except DynamicNetsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["targets"] = targets(result)
    load_after = os.getloadavg()
    meta = {
        "threads": opts.threads, "epochs": opts.epochs, "max_steps_per_epoch": opts.max_steps_per_epoch,
        "schedule": SCHEDULE, "eval_seconds": seconds,
        "evaluation": (f"seeded 5k validation split (seed 0) cut by split_for_calibration into "
                       f"{result['calibration_samples']} calibration / {result['evaluation_samples']} evaluation "
                       "images; thresholds and resolution policies fitted on the first, everything scored on the "
                       "second; compact execution, eval mode, channels-last"),
        "timing": (f"one thread, torch.utils.benchmark, interleaved in the same run; batch 256: the first 256 "
                   f"evaluation images as one batch; batch 1: the first {BATCH1_SAMPLES} one by one; min run time "
                   f"{opts.min_run_time} s per callable and round; early exits: executor vs the same model's full "
                   f"network (3 rounds); dynamic resolution: every case and resnet20 together ({opts.rounds} rounds)"),
        "load": (f"one core (taskset) shared with other light jobs; 1-minute load average {load_before[0]:.2f} "
                 f"before, {load_after[0]:.2f} after the evaluation; quote ratios of one run, not milliseconds"),
        "budget_fractions_of_resnet20": list(BUDGETS),
        "flops_note": "2 FLOPs per multiply-add; resizing and pooling are not counted, the resolution predictor is",
        "command": "python benchmarks/resolution_cifar.py " + " ".join(sys.argv[1:]),
    }
    write_outputs(result, meta, Path(opts.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
