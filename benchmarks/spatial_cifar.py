"""Pixel-level sparsity on CIFAR-10: trained DynConv ResNet-20s against the plain ResNet-20
they were fine-tuned next to: accuracy, FLOPs, and what the clock says.

The runs (made with `configs/cifar10_dynconv_resnet20_finetune.yaml`: the plain ResNet-20
and a DynConv ResNet-20 per budget, each fine-tuned 2 epochs from the same ResNet-20
checkpoint, so every row has the same training):

    .venv/bin/dynamicnets train --config configs/cifar10_dynconv_resnet20_finetune.yaml name=plain_resnet20 model=resnet20
    .venv/bin/dynamicnets train --config configs/cifar10_dynconv_resnet20_finetune.yaml name=dynconv_resnet20_b0.25 model_args.budget=0.25
    ... (budgets 0.5 and 0.75 the same way)

Every checkpoint is scored on the split it names (`--split`, default the seeded 45k/5k
validation split of its training config), with the checkpoint's own preprocessing, in eval
mode: hard gates, compact execution with the model's default strategy (gathered positions
for per-position gates), batches of 256. Per model: `accuracy`, `mean_flops` (mean of
`out.flops` per sample: stem, ungated blocks, head, gates and the FLOPs the sparse
execution computes for its masks) and `density` (mean of `decisions["density"]`: the
executed fraction of the gated blocks' dense FLOPs).

Timing, per batch size (`--batch-sizes`): the first `--timed-samples` validation images,
cut into batches of that size (the same batches for every model and strategy), and the
next `batch size` images as a calibration batch. `fastest_block_strategies` times dense,
gathered positions and gathered tiles on every gated block's real input and masks of the
calibration batch and picks the fastest per block (`chosen_strategies`). Then, interleaved
in rounds (`dynamicnets.profiling.latency.compare`: `torch.utils.benchmark`,
`--threads` threads, warm-up calls, no autograd), each timed statement runs the model over
all timed batches: the plain model, and the dynamic model with strategy `positions`,
`tiles` (tile `--tile`) and `per_block` (the chosen list). Inputs and weights are
channels-last for every model. `time_ms` is the median time per batch.

Records (one per dynamic model, batch size and strategy; plus one `plain` record):
`speedup_flops` is the plain FLOPs over the dynamic model's mean `out.flops` on the timed
batches *with that strategy* (tiles compute whole tiles, `dense` blocks their full map,
so the FLOPs differ per strategy); `speedup_measured` is the plain time over the dynamic
time (same run); `realized = speedup_measured / speedup_flops`; `saving_realized` is the
fraction of the model's FLOPs saving (`flops_saving_vs_plain`, on the whole split) that the
clock shows: `(1 - 1 / speedup_measured) / flops_saving_vs_plain`.

Target (stated in the Markdown with the verdict, computed from the records): at least 30%
of the plain FLOPs saved within 1 accuracy point of the plain model, and at least 0.6 of
that saving realised on the clock (`saving_realized`, best strategy of a batch size).

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/spatial_cifar.py \\
        --plain runs/spatial/plain_resnet20 \\
        --dynamic runs/spatial/dynconv_resnet20_b0.25 runs/spatial/dynconv_resnet20_b0.5 \\
                  runs/spatial/dynconv_resnet20_b0.75 --threads 1
    # smoke run (a few images, short timings; write the results elsewhere)
    ... --quick --out /tmp/s.json --markdown /tmp/s.md --plot /tmp/s.png

Writes benchmarks/results/spatial_cifar.{json,md,png} by default.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from dynamicnets.data import make_eval_loader
from dynamicnets.inference import fastest_block_strategies
from dynamicnets.pipelines.checkpoint_data import CheckpointData, load_checkpoint_data
from dynamicnets.pipelines.checkpoints import load_trained_model, run_checkpoint
from dynamicnets.pipelines.early_exit import timed_batches
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.plots import plot_accuracy_vs_flops
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training.evaluate import to_channels_last

ROOT = Path(__file__).resolve().parents[1]
DATA = "cifar10:" + str(ROOT / "data" / "cifar-10-batches-py")
RESULTS = ROOT / "benchmarks" / "results"
STRATEGIES = ("positions", "tiles", "per_block")
TARGET_SAVING = 0.30   # fraction of the plain FLOPs saved, at least
TARGET_DROP = 1.0      # accuracy points below plain, at most
TARGET_REALIZED = 0.6  # fraction of the FLOPs saving seen on the clock, at least
QUICK_SAMPLES = 32     # --quick: images scored


@dataclass
class Loaded:
    """A trained model with what the benchmark reads from its checkpoint."""

    run: str
    path: Path
    model: nn.Module
    ckpt: dict
    budget: float | None


def load(given: str, tile: int) -> Loaded:
    path = run_checkpoint(given)
    model, ckpt = load_trained_model(path)
    to_channels_last(model)
    if hasattr(model, "sparse_tile"):
        model.sparse_tile = tile
    config_args = (ckpt.get("config") or {}).get("model_args") or {}
    budget = config_args.get("budget", ckpt["model_args"].get("budget", getattr(model, "budget", None)))
    run = path.parent.name if path.parent.name else path.stem
    return Loaded(run=run, path=path, model=model, ckpt=ckpt, budget=budget)


class DataCache:
    """Checkpoint data read once per (spec, preprocessing, split, seed)."""

    def __init__(self, data: str | None, split: str) -> None:
        self.data, self.split, self.cache = data, split, {}

    def get(self, loaded: Loaded) -> CheckpointData:
        config = loaded.ckpt.get("config") or {}
        key = (self.data or loaded.ckpt.get("data"), repr(loaded.ckpt.get("preprocessing")),
               config.get("val_size"), config.get("seed"))
        if key not in self.cache:
            self.cache[key] = load_checkpoint_data(loaded.ckpt, str(loaded.path), self.data, self.split)
        return self.cache[key]


@torch.no_grad()
def score(model: nn.Module, dataset: Dataset) -> dict:
    """Accuracy, mean per-sample FLOPs and mean density over `dataset` (eval, compact)."""
    correct = count = 0
    flops = density = 0.0
    for x, y in make_eval_loader(dataset, 256):
        out = model(x.contiguous(memory_format=torch.channels_last))
        correct += int((out.logits.argmax(1) == y).sum())
        count += y.shape[0]
        flops += float(out.flops.double().sum())
        d = out.decisions.get("density")
        density += float(d.double().sum()) if d is not None else float(y.shape[0])
    return {"accuracy": correct / count, "mean_flops": flops / count, "density": density / count,
            "samples": count}


def timing_inputs(dataset: Dataset, batch_size: int, samples: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The timed batches (first `samples` images, at least one batch) and the calibration
    batch (the next `batch_size` images), channels-last."""
    samples = max(samples // batch_size, 1) * batch_size
    if len(dataset) < samples + batch_size:
        raise SystemExit(f"batch size {batch_size}: the split has {len(dataset)} images, fewer than the "
                         f"{samples} timed plus {batch_size} for calibration")
    everything = timed_batches(dataset, samples + batch_size, batch_size)
    cl = [b.contiguous(memory_format=torch.channels_last) for b in everything]
    return cl[:-1], cl[-1]


@torch.no_grad()
def mean_flops(model: nn.Module, batches: list[torch.Tensor], **kwargs) -> float:
    """Mean of `out.flops` per sample over `batches`."""
    total = sum(float(model(x, **kwargs).flops.double().sum()) for x in batches)
    return total / sum(x.shape[0] for x in batches)


def run_all(model: nn.Module, batches: list[torch.Tensor], **kwargs) -> None:
    for x in batches:
        model(x, **kwargs)


def time_batch_size(plain: Loaded, dyn: Loaded, batches, calib, args) -> list[dict]:
    """One record per strategy for `dyn` at this batch size (plain timed in the same rounds)."""
    chosen, block_times = fastest_block_strategies(dyn.model, calib, min_run_time=args.block_min_run_time,
                                                   rounds=args.rounds)
    kwargs = {"positions": {"strategy": "positions"}, "tiles": {"strategy": "tiles"},
              "per_block": {"strategy": chosen}}
    fns = {"plain": lambda: run_all(plain.model, batches)}
    fns.update({name: (lambda kw=kw: run_all(dyn.model, batches, **kw)) for name, kw in kwargs.items()})
    timing = compare(fns, threads=args.threads, min_run_time=args.min_run_time, warmup=args.warmup,
                     rounds=args.rounds)
    plain_flops = mean_flops(plain.model, batches)
    rows = []
    for name, kw in kwargs.items():
        flops = mean_flops(dyn.model, batches, **kw)
        measured = ratio(timing, "plain", name)
        speedup_flops = plain_flops / flops
        rows.append({
            "strategy": name, "batch_size": int(batches[0].shape[0]), "timed_batches": len(batches),
            "flops": flops, "plain_flops": plain_flops, "speedup_flops": speedup_flops,
            "speedup_measured": measured, "realized": measured / speedup_flops,
            "time_ms": timing[name].median_ms / len(batches),
            "plain_time_ms": timing["plain"].median_ms / len(batches),
            "chosen_strategies": chosen if name == "per_block" else None,
            "block_strategy_ms": ([{k: v * 1e3 for k, v in t.items()} for t in block_times]
                                  if name == "per_block" else None),
        })
    return rows


def describe(loaded: Loaded, scored: dict, plain_scored: dict | None) -> dict:
    saving = None if plain_scored is None else 1 - scored["mean_flops"] / plain_scored["mean_flops"]
    drop = None if plain_scored is None else 100 * (plain_scored["accuracy"] - scored["accuracy"])
    return {"model": loaded.ckpt["model_name"], "run": loaded.run, "budget": loaded.budget,
            "checkpoint": str(path_rel(loaded.path)), "accuracy": scored["accuracy"],
            "mean_flops": scored["mean_flops"], "density": scored["density"], "samples": scored["samples"],
            "flops_saving_vs_plain": saving, "accuracy_drop_points": drop,
            "flops_strategy": (loaded.model.strategies[0].value if hasattr(loaded.model, "strategies")
                               else "static")}


def path_rel(path: Path) -> Path:
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path


def saving_realized(row: dict) -> float | None:
    saving = row.get("flops_saving_vs_plain")
    if not saving or saving <= 0:
        return None
    return (1 - 1 / row["speedup_measured"]) / saving


def verdict(model_rows: list[dict], batch_sizes: list[int]) -> str:
    """One sentence: does this model meet the target, computed from its records."""
    first = model_rows[0]
    saving, drop = first["flops_saving_vs_plain"], first["accuracy_drop_points"]
    flops_ok = saving >= TARGET_SAVING and drop <= TARGET_DROP  # drop: points below plain
    clock = []
    for b in batch_sizes:
        at_b = [r for r in model_rows if r["batch_size"] == b and r["saving_realized"] is not None]
        if at_b:
            best = max(at_b, key=lambda r: r["saving_realized"])
            clock.append((b, best["saving_realized"], best["strategy"]))
    met = [b for b, value, _ in clock if value >= TARGET_REALIZED]
    clock_text = ", ".join(f"{value:.2f} at batch {b} ({name})" for b, value, name in clock) or "none (no saving)"
    meets = flops_ok and bool(met)
    return (f"- **{first['run']}** (budget {first['budget']}): {100 * saving:.1f}% FLOPs saved at "
            f"accuracy {-drop:+.2f} points vs plain ({'meets' if flops_ok else 'misses'} the FLOPs/accuracy part); "
            f"best fraction of the saving realised on the clock: {clock_text} "
            f"({'meets' if met else 'misses'} the timing part"
            f"{' at batch ' + ', '.join(map(str, met)) if met else ''}): "
            f"**{'meets' if meets else 'does not meet'} the target**.")


def write_markdown(path: Path, plain_row: dict, rows: list[dict], batch_sizes: list[int], meta: dict) -> None:
    runs = list(dict.fromkeys(r["run"] for r in rows))
    table = [{"model": plain_row["run"], "budget": "plain", "accuracy": plain_row["accuracy"],
              "mean FLOPs (M)": plain_row["mean_flops"] / 1e6, "FLOPs saved %": 0.0}]
    for run in runs:
        mine = [r for r in rows if r["run"] == run]
        row = {"model": run, "budget": mine[0]["budget"], "accuracy": mine[0]["accuracy"],
               "mean FLOPs (M)": mine[0]["mean_flops"] / 1e6,
               "FLOPs saved %": 100 * mine[0]["flops_saving_vs_plain"]}
        for r in mine:
            row[f"b{r['batch_size']} {r['strategy']}"] = r["speedup_measured"]
        table.append(row)
    columns = ["model", "budget", "accuracy", "mean FLOPs (M)", "FLOPs saved %"]
    columns += [f"b{b} {s}" for b in batch_sizes for s in STRATEGIES]
    formats = {c: ".2f" for c in columns}
    formats.update({"accuracy": ".4f", "mean FLOPs (M)": ".2f", "FLOPs saved %": ".1f"})
    verdicts = "\n".join(verdict([r for r in rows if r["run"] == run], batch_sizes) for run in runs)
    text = (
        f"Scored on {meta['scored_on']}; eval mode, hard gates, compact execution. Columns `bB strategy`: "
        f"measured speedup over the plain model at batch B ({meta['threads']} thread(s), interleaved rounds, "
        f"{meta['timed_samples_note']}).\n\n{markdown_table(table, columns, formats)}\n\n"
        f"Target: at least {100 * TARGET_SAVING:.0f}% of the plain FLOPs saved within {TARGET_DROP:g} accuracy "
        f"point of plain, and at least {TARGET_REALIZED:g} of that saving realised on the clock "
        f"(`(1 - 1/measured speedup) / FLOPs saving`, best strategy of a batch size).\n\n{verdicts}\n"
    )
    if meta.get("quick"):
        text = "**Smoke run (`--quick`): a few images, short timings; not results.**\n\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_plot(path: Path, plain_row: dict, rows: list[dict]) -> None:
    series = {}
    for r in rows:
        series.setdefault(f"budget {r['budget']}", {(r["mean_flops"], r["accuracy"])})
    plot_accuracy_vs_flops({k: sorted(v) for k, v in series.items()}, path,
                           title="CIFAR-10 DynConv ResNet-20 (pixel-level sparsity)",
                           static_points={"plain ResNet-20": (plain_row["mean_flops"], plain_row["accuracy"])})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", required=True, help="run folder or checkpoint of the plain ResNet-20")
    parser.add_argument("--dynamic", nargs="+", required=True, help="run folders or checkpoints of DynConv models")
    parser.add_argument("--data", default=DATA, help="data spec (default: the shared CIFAR-10)")
    parser.add_argument("--split", default="val", choices=("val", "test", "all"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--timed-samples", type=int, default=128,
                        help="images timed per batch size (at least one batch)")
    parser.add_argument("--tile", type=int, default=8, help="tile side of the tiles strategy")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timed statement and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (timing and block choice)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each timed statement first")
    parser.add_argument("--block-min-run-time", type=float, default=0.1,
                        help="seconds per measurement of fastest_block_strategies")
    parser.add_argument("--out", type=Path, default=RESULTS / "spatial_cifar.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "spatial_cifar.md")
    parser.add_argument("--plot", type=Path, default=RESULTS / "spatial_cifar.png")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SAMPLES} images scored, "
                        "one short round of timing")
    args = parser.parse_args(argv)
    if args.threads < 1 or min(args.batch_sizes) < 1 or args.timed_samples < 1 or args.tile < 1:
        parser.error("--threads, --batch-sizes, --timed-samples and --tile must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:  # one batch per batch size, one short round
        args.timed_samples, args.min_run_time, args.block_min_run_time = 1, 0.005, 0.005
        args.rounds, args.warmup = 1, 1
    data = DataCache(args.data, args.split)
    plain = load(args.plain, args.tile)
    plain_data = data.get(plain)
    scoring = (lambda d: Subset(d, range(min(QUICK_SAMPLES, len(d))))) if args.quick else (lambda d: d)
    plain_row = {**describe(plain, score(plain.model, scoring(plain_data.dataset)), None),
                 "strategy": "static", "flops_saving_vs_plain": 0.0, "accuracy_drop_points": 0.0}
    print(json.dumps({k: plain_row[k] for k in ("run", "accuracy", "mean_flops")}), flush=True)
    meta = {"threads": args.threads, "quick": args.quick, "scored_on": plain_data.scored_on,
            "timed_samples_note": (f"each model run over the first {args.timed_samples} image(s) of the split in "
                                   "batches of B (at least one batch), time per batch"),
            "batch_sizes": args.batch_sizes, "tile": args.tile, "min_run_time": args.min_run_time,
            "rounds": args.rounds, "warmup": args.warmup, "block_min_run_time": args.block_min_run_time,
            "target": {"flops_saving": TARGET_SAVING, "accuracy_drop_points": TARGET_DROP,
                                              "saving_realized": TARGET_REALIZED},
            "command": "python benchmarks/spatial_cifar.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    rows = []
    for given in args.dynamic:
        dyn = load(given, args.tile)
        dyn_data = data.get(dyn)
        base = describe(dyn, score(dyn.model, scoring(dyn_data.dataset)), plain_row)
        for batch_size in args.batch_sizes:
            batches, calib = timing_inputs(dyn_data.dataset, batch_size, args.timed_samples)
            for timed in time_batch_size(plain, dyn, batches, calib, args):
                rows.append({**base, **timed})
                rows[-1]["saving_realized"] = saving_realized(rows[-1])
                print(json.dumps({k: rows[-1][k] for k in ("run", "batch_size", "strategy", "speedup_flops",
                                                           "speedup_measured", "realized")}), flush=True)
        write_json(args.out, [plain_row, *rows], meta)  # after every model: an interrupted run keeps it
    write_markdown(args.markdown, plain_row, rows, args.batch_sizes, meta)
    write_plot(args.plot, plain_row, rows)
    print(args.markdown.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
