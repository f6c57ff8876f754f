"""Layer skipping on CIFAR-10: accuracy against executed blocks and FLOPs.

CPU-feasible schedule (stated in every record's `schedule`):

1. plain CIFAR ResNet-`d`, 5 epochs from scratch (SGD nesterov, lr 0.1 cosine, wd 5e-4,
   batch 128, crop + flip; ResNet-110 with one epoch of linear warm-up, without which it
   stays at chance) — the same runs as `early_exit_budgeted.py`, reused when present;
2. every method starts from that plain network (`init_from`, backbone weights; its gates
   are new) and trains `--finetune-epochs` more (lr `--finetune-lr` cosine). The plain
   network gets the same extra epochs (`plain`), so every row has the same training.

BlockDrop and SkipNet start from a pre-trained ResNet in their papers too (BlockDrop
freezes it at first; SkipNet pre-trains with soft gates, then hybrid RL). ConvNet-AIG and
ACT are trained from scratch in theirs; here they fine-tune like the rest.

Evaluation on the seeded 5k validation split (45k/5k; the shared CIFAR-10 has no test
batch), in eval mode, i.e. hard gates and compact execution: accuracy, mean executed
blocks (of `3n`), mean FLOPs (gates included), FLOPs saving against `plain`, and the
measured speedup against `plain` at batch 256 (same run, interleaved). Every finished
case is appended to the results at once, so an interrupted run keeps what it measured.

    python benchmarks/layer_skipping_cifar.py                    # depths 32 and 56
    python benchmarks/layer_skipping_cifar.py --depths 110       # ~7 min per epoch here
    python benchmarks/layer_skipping_cifar.py --evaluate-only    # re-time when the CPU is quiet
    # smoke run of the script itself (results land in benchmarks/results: do not commit them)
    python benchmarks/layer_skipping_cifar.py --depths 20 --max-steps 2 --out-dir /tmp/skip_smoke

Writes benchmarks/results/layer_skipping_cifar.{json,md,png}; checkpoints in runs/bench/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.plots import plot_accuracy_vs_flops
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training import TrainConfig, Trainer
from dynamicnets.training.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
DATA = "cifar10:" + str(ROOT / "data" / "cifar-10-batches-py")
RESULTS = ROOT / "benchmarks" / "results"
METHODS = {  # method -> (registered model, model arguments)
    "skipnet": ("skipnet_resnet", {"gate": "ffgate", "rl": True, "cost_weight": 0.1}),
    "convnet_aig": ("convnet_aig_resnet", {"target_rate": 0.6}),
    "blockdrop": ("blockdrop_resnet", {"penalty": 1.0}),
    "act": ("act_resnet", {"ponder_weight": 0.01}),
}
PLAIN_EPOCHS = 5


def base_config(name: str, model: str, model_args: dict, epochs: int, lr: float, opts: argparse.Namespace,
                **extra) -> TrainConfig:
    return TrainConfig(
        name=name, model=model, model_args=model_args, data=DATA, val_size=5000, epochs=epochs, batch_size=128,
        optimizer="sgd", lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
        channels_last=True, seed=0, out_dir=opts.out_dir, resume=True, threads=opts.threads,
        progress=sys.stderr.isatty(), max_steps_per_epoch=opts.max_steps, **extra)


def train(config: TrainConfig) -> Path:
    start = time.perf_counter()
    result = Trainer(config).fit()
    print(f"{config.name}: val accuracy {result.get('val_accuracy')} ({time.perf_counter() - start:.0f} s)",
          flush=True)
    return Path(config.out_dir) / config.name / "last.pt"


def runs_for_depth(depth: int, args) -> dict[str, Path]:
    """Train (or find) the plain network and every method for one depth; method -> last.pt."""
    # ResNet-110 does not start learning at lr 0.1 (chance accuracy after an epoch here): He et
    # al. warm it up at 0.01; here one epoch of linear warm-up
    warmup = 1 if depth >= 110 else 0
    plain = train(base_config(f"cifar10_resnet{depth}", f"resnet{depth}", {}, PLAIN_EPOCHS, 0.1, args,
                              warmup_epochs=warmup))
    epochs = args.finetune_epochs
    runs = {"plain": train(base_config(f"cifar10_resnet{depth}_plus{epochs}", f"resnet{depth}", {}, epochs,
                                       args.finetune_lr, args, init_from=str(plain)))}
    for method in args.methods:
        model, model_args = METHODS[method]
        config = base_config(f"cifar10_{method}{depth}_plus{epochs}", model, {"depth": depth, **model_args},
                             epochs, args.finetune_lr, args, init_from=str(plain),
                             init_prefix="backbone.")
        runs[method] = train(config)
    return runs


def measure(depth: int, runs: dict[str, Path], val, x_timed: torch.Tensor, args) -> list[dict]:
    models = {}
    for method, path in runs.items():
        model, _ = load_trained_model(path)
        models[method] = model.to(memory_format=torch.channels_last)
    n = (depth - 2) // 6
    rows = []
    plain_metrics = None
    for method, model in models.items():
        metrics = evaluate(model, make_eval_loader(val, 256), "cpu", channels_last=True)
        rate = metrics["block_execution_rate"]
        executed = 3 * n if rate is None else 3 + sum(rate)
        if method == "plain":
            plain_metrics = metrics
        timing = compare({"method": lambda m=model: m(x_timed), "plain": lambda: models["plain"](x_timed)},
                         threads=args.threads, min_run_time=args.min_run_time, rounds=args.rounds)
        rows.append({
            "method": method, "depth": depth, "finetune_epochs": args.finetune_epochs,
            "batch_size": int(x_timed.shape[0]),
            "accuracy": metrics["accuracy"], "mean_flops": metrics["mean_flops"],
            "executed_blocks": executed, "total_blocks": 3 * n, "executed_fraction": executed / (3 * n),
            "gated_block_rate": None if rate is None else sum(rate) / len(rate),
            "speedup_flops": plain_metrics["mean_flops"] / metrics["mean_flops"],
            "speedup_measured": ratio(timing, "plain", "method"),
            "accuracy_drop_vs_plain": plain_metrics["accuracy"] - metrics["accuracy"],
            "flops_saving_vs_plain": 1 - metrics["mean_flops"] / plain_metrics["mean_flops"],
            "checkpoint": str(path_rel(runs[method])),
        })
        print(json.dumps({k: rows[-1][k] for k in ("method", "depth", "accuracy", "executed_blocks",
                                                   "speedup_flops", "speedup_measured")}), flush=True)
    return rows


def path_rel(path: Path) -> Path:
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path


def merged_with_earlier(rows: list[dict], args) -> list[dict]:
    """This run's rows plus the earlier results file's rows for other (method, depth, schedule)."""
    path = RESULTS / "layer_skipping_cifar.json"
    if not path.is_file():
        return rows
    key = lambda r: (r["method"], r["depth"], r.get("finetune_epochs", 1))  # noqa: E731
    new = {key(r) for r in rows}
    earlier = [r for r in json.loads(path.read_text())["records"] if key(r) not in new]
    return sorted(earlier + rows, key=lambda r: (r["depth"], r.get("finetune_epochs", 1),
                                                 list(("plain", *METHODS)).index(r["method"])))


def write_results(rows: list[dict], args, train_seconds: float) -> None:
    rows = merged_with_earlier(rows, args)
    schedule = (f"plain ResNet {PLAIN_EPOCHS} epochs (SGD nesterov lr 0.1 cosine, wd 5e-4, batch 128, crop+flip, "
                f"channels_last; ResNet-110: 1 epoch linear warm-up), then every row `finetune_epochs` more epoch(s) from it at lr "
                f"{args.finetune_lr} cosine (gates new)")
    meta = {"threads": args.threads, "schedule": schedule, "train_seconds": train_seconds,
            "evaluation": "seeded 5k validation split (45k/5k), eval mode: hard gates, compact execution",
            "command": "python benchmarks/layer_skipping_cifar.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / "layer_skipping_cifar.json", rows, meta)
    table = markdown_table(
        [{k: r.get(k, 1) for k in ("method", "depth", "finetune_epochs", "accuracy", "executed_blocks",
                                   "total_blocks", "mean_flops", "flops_saving_vs_plain", "accuracy_drop_vs_plain",
                                   "speedup_flops", "speedup_measured")} for r in rows],
        floatfmt={"accuracy": ".4f", "executed_blocks": ".1f", "mean_flops": ".4g", "flops_saving_vs_plain": ".3f",
                  "accuracy_drop_vs_plain": ".4f", "speedup_flops": ".2f", "speedup_measured": ".2f"})
    (RESULTS / "layer_skipping_cifar.md").write_text(f"Schedule: {schedule}.\n\n{table}\n")
    curves = {}
    for r in rows:
        curves.setdefault(r["method"], []).append((r["mean_flops"], r["accuracy"]))
    plot_accuracy_vs_flops(curves, RESULTS / "layer_skipping_cifar.png",
                           title="CIFAR-10 layer skipping (ResNet depths; short CPU schedule)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[32, 56])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--evaluate-only", action="store_true", help="use the finished runs, train nothing")
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--max-steps", type=int, default=None, help="steps per epoch (smoke runs only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_data(DATA, val_size=5000, seed=0, augment=False)
    x_timed = next(iter(make_eval_loader(bundle.val, 256)))[0].contiguous(memory_format=torch.channels_last)
    rows, start = [], time.perf_counter()
    for depth in args.depths:
        if args.evaluate_only:
            out, e = Path(args.out_dir), args.finetune_epochs
            runs = {"plain": out / f"cifar10_resnet{depth}_plus{e}" / "last.pt"}
            runs.update({m: out / f"cifar10_{m}{depth}_plus{e}" / "last.pt" for m in args.methods})
            runs = {m: p for m, p in runs.items() if p.is_file()}
        else:
            runs = runs_for_depth(depth, args)
        rows += measure(depth, runs, bundle.val, x_timed, args)
        write_results(rows, args, time.perf_counter() - start)
    print((RESULTS / "layer_skipping_cifar.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
