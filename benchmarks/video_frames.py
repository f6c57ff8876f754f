"""Frame-level early exit on moving MNIST: accuracy against frames read, and the time it saves.

Trains (same schedule, same seed) the static `video_gru_classifier` (the per-frame CNN and
GRU over all 16 frames, one head at the end) and `frame_exit_classifier` (the same CNN and
GRU with a head after every frame, multi-exit loss) on `moving_mnist` videos (16 frames of
48x48, the digit visible in 4 random frames and hidden under a noise block in the other 12;
no distractor squares by default: with two of them, the static model stayed at 14% validation
accuracy after 5 epochs of this short schedule). The validation split
is cut in two halves: thresholds of the max-probability exit policy are calibrated on the
first for each budget (a fraction of the full per-sample cost), accuracy and cost are
measured on the second (the data folder has no test split). `frame_exit, all 16 frames` is
the same model with every exit closed: it reads every frame and classifies once, at the
static model's cost.

Timing on this CPU, at batch 256 and at batch 1 (`--singles` videos one after the other,
each with its own exits), in the same run: the static model (its CNN on all frames in one
call, then the GRU loop: `static_loop_ms`) against the dynamic model in compact execution
(`ms`). `speedup_measured` = static_loop_ms / ms; `speedup_flops` = static FLOPs / mean
dynamic FLOPs (heads after every frame included); `update_fraction` = frames read / 16.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/video_frames.py              # ~15 min here
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/video_frames.py --time-only  # re-time finished runs

Writes benchmarks/results/video_frames.{json,md}; checkpoints in runs/bench/, the
generated videos in runs/data/.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from dynamicnets.data import load_data
from dynamicnets.inference import ExitPolicy, calibrate_thresholds
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def spec(args) -> str:
    return (f"moving_mnist:{args.mnist}?frames={args.frames}&size={args.size}&visible={args.visible}"
            f"&occluders={args.occluders}&videos={args.videos}&seed=0&cache={args.data_cache}")


def config(name: str, model: str, args) -> TrainConfig:
    model_args = {"frames": args.frames, "size": args.size, "hidden": args.hidden, "widths": list(args.widths)}
    return TrainConfig(name=name, model=model, model_args=model_args, data=spec(args), val_size=args.val_size,
                       epochs=args.epochs, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=0.01,
                       schedule="cosine", grad_clip=1.0, seed=0, device="cpu", out_dir=args.out_dir, resume=True,
                       threads=args.threads, progress=sys.stderr.isatty())


@torch.no_grad()
def masked_exit_logits(model, x: torch.Tensor, batch: int = 256) -> list[torch.Tensor]:
    """Every exit's logits on `x` (one masked pass per chunk)."""
    parts = [model(x[i : i + batch], execution="masked").exit_logits for i in range(0, len(x), batch)]
    return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]


@torch.no_grad()
def run_all(model, x: torch.Tensor, batch: int = 256, **kwargs):
    outs = [model(x[i : i + batch], **kwargs) for i in range(0, len(x), batch)]
    logits = torch.cat([o.logits for o in outs])
    flops = torch.cat([o.flops for o in outs])
    frames = torch.cat([o.decisions["frames_read"] for o in outs]) if "frames_read" in outs[0].decisions else None
    return logits, flops, frames


@torch.no_grad()
def timing(dynamic, static, xs: list[torch.Tensor], policy, args) -> dict:
    """Time the calls on every tensor of `xs` in a row (one batch of 256, or single videos)."""
    fns = {"dynamic": lambda: [dynamic(x, policy=policy) for x in xs], "static": lambda: [static(x) for x in xs]}
    timed = compare(fns, threads=args.threads, min_run_time=args.min_run_time, rounds=args.rounds)
    return {"speedup_measured": ratio(timed, "static", "dynamic"), "ms": timed["dynamic"].median_ms,
            "static_loop_ms": timed["static"].median_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default="data/mnist", help="MNIST IDX folder")
    parser.add_argument("--data-cache", default=str(ROOT / "runs" / "data"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--visible", type=int, default=4)
    parser.add_argument("--occluders", type=int, default=0)
    parser.add_argument("--videos", type=int, default=3000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3],
                        help="mean cost per video as a fraction of the static model's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=32, help="videos timed one by one for batch 1")
    parser.add_argument("--time-only", action="store_true", help="use finished runs, train nothing")
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tag = f"t{args.frames}_s{args.size}_v{args.visible}_o{args.occluders}_n{args.videos}_e{args.epochs}"
    paths = {}
    for key, model in (("static", "video_gru_classifier"), ("frame_exit", "frame_exit_classifier")):
        name = f"moving_mnist_{key}_{tag}"
        if not args.time_only:
            Trainer(config(name, model, args)).fit()
        paths[key] = Path(args.out_dir) / name / "last.pt"
    bundle = load_data(spec(args), val_size=args.val_size, seed=0, augment=False)
    x_val = torch.stack([bundle.val[i][0] for i in range(len(bundle.val))])
    y_val = bundle.val.targets
    half = len(x_val) // 2
    x_cal, y_cal, x_test, y_test = x_val[:half], y_val[:half], x_val[half:], y_val[half:]
    static, _ = load_trained_model(paths["static"])
    dynamic, _ = load_trained_model(paths["frame_exit"])
    static.eval(), dynamic.eval()
    input_shape = tuple(x_test.shape[1:])
    static_flops = static.full_flops(input_shape)
    s_logits, _, _ = run_all(static, x_test)
    static_acc = float((s_logits.argmax(1) == y_test).double().mean())
    batch_256 = x_test[:256]
    singles = [x_test[i : i + 1] for i in range(args.singles)]
    rows = []
    for batch, xs in ((256, [batch_256]), (1, singles)):
        timed = compare({"static": lambda: [static(x) for x in xs]}, threads=args.threads,
                        min_run_time=args.min_run_time, rounds=args.rounds)
        rows.append({"method": "static (all 16 frames)", "hidden": args.hidden, "batch_size": batch,
                     "accuracy": static_acc, "update_fraction": 1.0, "mean_flops": static_flops,
                     "speedup_flops": 1.0, "speedup_measured": 1.0, "ms": timed["static"].median_ms,
                     "static_loop_ms": timed["static"].median_ms})
    exits = masked_exit_logits(dynamic, x_cal)
    costs = dynamic.exit_costs(input_shape)
    cases = [("frame_exit, all 16 frames", ExitPolicy("maxprob", [math.inf] * (args.frames - 1)))]
    for fraction in args.budgets:
        fit = calibrate_thresholds(exits, y_cal, costs, fraction * static_flops)
        cases.append((f"frame_exit, budget {fraction:g}", fit.policy))
    for method, policy in cases:
        logits, flops, frames = run_all(dynamic, x_test, policy=policy)
        row = {"method": method, "hidden": args.hidden, "accuracy": float((logits.argmax(1) == y_test).double().mean()),
               "update_fraction": float(frames.double().mean()) / args.frames, "mean_flops": float(flops.mean()),
               "speedup_flops": static_flops / float(flops.mean()),
               "thresholds": [None if math.isinf(t) else float(t) for t in policy.thresholds]}
        for batch, xs in ((256, [batch_256]), (1, singles)):
            rows.append({**row, "batch_size": batch, **timing(dynamic, static, xs, policy, args)})
            print({k: rows[-1][k] for k in ("method", "batch_size", "accuracy", "update_fraction", "speedup_flops",
                                            "speedup_measured")}, flush=True)
    meta = {"threads": args.threads, "data": spec(args).replace(str(ROOT) + "/", "").replace(args.mnist, "MNIST_DIR"),
            "split": f"{args.videos - args.val_size} train videos; validation {args.val_size}: first half "
                     f"calibrates the thresholds, second half ({len(x_test)}) is scored",
            "schedule": f"{args.epochs} epochs AdamW lr 3e-3 cosine, wd 0.01, batch 64, grad clip 1, seed 0, "
                        "one CPU core",
            "command": "python benchmarks/video_frames.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / "video_frames.json", rows, meta)
    columns = ("method", "batch_size", "accuracy", "update_fraction", "speedup_flops", "speedup_measured",
               "static_loop_ms", "ms")
    table = markdown_table([{c: r.get(c) for c in columns} for r in rows],
                           floatfmt={"accuracy": ".4f", "update_fraction": ".3f", "speedup_flops": ".2f",
                                     "speedup_measured": ".2f", "static_loop_ms": ".2f", "ms": ".2f"})
    (RESULTS / "video_frames.md").write_text(f"Data: `{meta['data']}`. {meta['split']}. "
                                             f"Schedule: {meta['schedule']}.\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
