"""`make demo`: is a dynamic network better than static ones at the same cost? Measured, on MNIST-1D.

1. Train the static `mnist1d_cnn` at four widths on MNIST-1D (generated locally, no
   download; 3,600 train / 400 validation samples), same schedule for all.
2. Build a cascade from two of those trained models (width 16, then width 64 for the
   samples the small one is not confident about; nothing is trained again) and fit its
   max-probability threshold to several mean-FLOPs budgets on the validation split.
3. Score every model on the 1,000-sample test split, which neither training nor the
   thresholds saw: accuracy, mean FLOPs, and time per sample at batch 256 and at batch 1,
   all timed interleaved in one run (the cascade with the compact executor: samples that
   exit leave the batch).
4. Compare each cascade budget with the static frontier at the same mean FLOPs and at the
   same measured time (`profiling.frontier`, paired noise on the shared test samples) and
   print the verdict, whichever way it goes; write JSON + Markdown and plot accuracy
   against FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..data import load_data
from ..errors import ConfigError
from ..inference.calibrate import calibrate_thresholds
from ..inference.executor import run_early_exit
from ..models.depth import Cascade, ModelStage
from ..pipelines.checkpoints import load_trained_model
from ..profiling.frontier import FrontierPoint, compare_to_frontier, verdict
from ..profiling.latency import compare
from ..profiling.plots import plot_accuracy_vs_flops, plot_training_curves
from ..profiling.report import format_flops, markdown_table, print_table, write_json
from ..training import TrainConfig, Trainer


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    data: str = "mnist1d"
    model: str = "mnist1d_cnn"
    widths: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    cascade: tuple[int, int] = (16, 64)  # (first member's width, second member's width), both in `widths`
    budgets: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.45, 0.6])  # of the way first -> both
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.003
    seed: int = 0
    threads: int | None = None
    timed_batch: int = 256
    single_samples: int = 64  # samples timed one by one for the batch-1 column
    min_run_time: float = 0.3  # seconds per timed callable and round
    progress: bool = True


COLUMNS = ["model", "budget", "accuracy", "mean_flops", "speedup_flops", "ms_per_sample_b256",
           "speedup_measured_b256", "ms_per_sample_b1", "speedup_measured_b1", "second_member_fraction"]


def _check(config: DemoConfig) -> None:
    missing = [w for w in config.cascade if w not in config.widths]
    if len(config.cascade) != 2 or missing or config.cascade[0] >= config.cascade[1]:
        raise ConfigError(f"demo: cascade must be two increasing widths out of widths={config.widths}, "
                          f"got {config.cascade}")
    if not config.budgets or not all(0 < b < 1 for b in config.budgets):
        raise ConfigError(f"demo: budgets must be fractions in (0, 1), got {config.budgets}")
    seconds = config.min_run_time
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ConfigError(f"demo: min_run_time (--min-run-time) must be a number of seconds > 0, got {seconds!r}")


def _train(config: DemoConfig, width: int) -> nn.Module:
    out = Path(config.out_dir)
    name = f"{config.model}_w{width}"
    Trainer(TrainConfig(
        name=name, model=config.model, model_args={"width": width}, data=config.data, val_size=0.1,
        epochs=config.epochs, batch_size=config.batch_size, optimizer="adamw", lr=config.lr, weight_decay=0.01,
        seed=config.seed, out_dir=str(out), progress=config.progress, threads=config.threads, overwrite=True,
    )).fit()
    plot_training_curves(out / name / "metrics.jsonl", out / name / "curves.png")
    return load_trained_model(out / name / "best.pt")[0]


def _batches(x: Tensor, size: int) -> list[Tensor]:
    return list(x.split(size))


def _fit_budgets(cascade: Cascade, x_val: Tensor, y_val: Tensor, costs: list[int], fractions: list[float]):
    with torch.no_grad():
        logits = [cascade.exit_logits(k, cascade.run_segment(k, None, x_val)) for k in range(cascade.num_exits)]
    budgets = [costs[0] + f * (costs[1] - costs[0]) for f in fractions]
    return [calibrate_thresholds(logits, y_val, costs, b).policy for b in budgets], budgets


def run_demo(config: DemoConfig) -> list[dict]:
    """Train, build the cascade, score, time, compare; returns the table rows."""
    _check(config)
    out = Path(config.out_dir)
    models = {w: _train(config, w) for w in config.widths}
    bundle = load_data(config.data, val_size=0.1, seed=config.seed)
    if bundle.test is None:
        raise ConfigError(f"demo: data {config.data!r} has no test split to score on")
    x_val, y_val = (torch.stack(t) for t in zip(*[bundle.val[i] for i in range(len(bundle.val))]))
    x_test, y_test = (torch.stack(t) for t in zip(*[bundle.test[i] for i in range(len(bundle.test))]))
    input_shape = tuple(bundle.input_shape)
    small, big = config.cascade
    cascade = Cascade([ModelStage(models[small], bundle.num_classes), ModelStage(models[big], bundle.num_classes)],
                      default_input_shape=input_shape).eval()
    costs = list(cascade.exit_costs(input_shape))
    policies, budgets = _fit_budgets(cascade, x_val, y_val, costs, config.budgets)

    batches, singles = _batches(x_test, config.timed_batch), list(x_test[:config.single_samples].split(1))
    rows, runs_b256, runs_b1 = [], {}, {}

    def timed(name: str, fn: Callable[[Tensor], object]) -> None:
        runs_b256[name] = lambda: [fn(b) for b in batches]
        runs_b1[name] = lambda: [fn(s) for s in singles]

    with torch.no_grad():
        for w, model in models.items():
            name = f"{config.model} w{w} (static)"
            correct = model(x_test).logits.argmax(1) == y_test
            rows.append({"model": name, "budget": "-", "correct": correct, "mean_flops": float(model.flops(input_shape)),
                         "second_member_fraction": None})
            timed(name, model)
        for fraction, budget, policy in zip(config.budgets, budgets, policies):
            result = run_early_exit(cascade, x_test, policy, costs=costs)
            name = f"cascade w{small}->w{big} @{fraction:.0%}"
            rows.append({"model": name, "budget": format_flops(budget), "correct": result.predictions == y_test,
                         "mean_flops": float(result.flops.double().mean()),
                         "second_member_fraction": float((result.exit_index == 1).double().mean()),
                         "thresholds": list(policy.thresholds)})
            timed(name, lambda x, p=policy: run_early_exit(cascade, x, p, costs=costs))

    at_b256 = compare(runs_b256, threads=config.threads, min_run_time=config.min_run_time)
    at_b1 = compare(runs_b1, threads=config.threads, min_run_time=config.min_run_time)
    full = f"{config.model} w{big} (static)"
    n, n1 = len(y_test), len(singles)
    for row in rows:
        row["accuracy"] = float(row["correct"].double().mean())
        row["ms_per_sample_b256"] = at_b256[row["model"]].median_ms / n
        row["ms_per_sample_b1"] = at_b1[row["model"]].median_ms / n1
        row["speedup_flops"] = float(models[big].flops(input_shape)) / row["mean_flops"]
        row["speedup_measured_b256"] = at_b256[full].median_ms / at_b256[row["model"]].median_ms
        row["speedup_measured_b1"] = at_b1[full].median_ms / at_b1[row["model"]].median_ms

    static, dynamic = rows[:len(models)], rows[len(models):]
    verdicts = {}
    for cost, label, fmt in [("mean_flops", "mean FLOPs", format_flops),
                             ("ms_per_sample_b256", "time per sample at batch 256", lambda c: f"{c:.4f} ms"),
                             ("ms_per_sample_b1", "time per sample at batch 1", lambda c: f"{c:.4f} ms")]:
        points = [[FrontierPoint(r["model"], r[cost], r["accuracy"], r["correct"]) for r in group]
                  for group in (static, dynamic)]
        comparisons = compare_to_frontier(*points, samples=n)
        for row, c in zip(dynamic, comparisons):
            row[f"beats_static_at_{cost}"] = c.wins
        verdicts[cost] = verdict(comparisons, model=f"the cascade w{small}->w{big}", cost_name=label,
                                 format_cost=fmt)

    for row in rows:
        row.pop("correct")
    print()
    print_table([{**r, "mean_flops": format_flops(r["mean_flops"])} for r in rows], COLUMNS,
                floatfmt={"accuracy": ".4f", "speedup_flops": ".2f", "ms_per_sample_b256": ".5f",
                          "speedup_measured_b256": ".2f", "ms_per_sample_b1": ".4f", "speedup_measured_b1": ".2f",
                          "second_member_fraction": ".3f"})
    print(f"\nscored on the {n} test samples (timed: all {n} in batches of {config.timed_batch}, and {n1} one by one);"
          " thresholds fitted on the validation split")
    for text in verdicts.values():
        print(f"verdict: {text}")
    write_json(out / "demo.json", rows, {"verdicts": verdicts, "samples": n, "threads": at_b256[full].threads})
    (out / "demo.md").write_text(markdown_table(rows, COLUMNS) + "\n\n" +
                                 "\n".join(f"- {t}" for t in verdicts.values()) + "\n")
    plot = plot_accuracy_vs_flops(
        {f"cascade w{small}->w{big} (calibrated budgets)": [(r["mean_flops"], r["accuracy"]) for r in dynamic],
         f"{config.model} widths (static)": [(r["mean_flops"], r["accuracy"]) for r in static]},
        out / "accuracy_vs_flops.png", title=f"{config.data} test split: a cascade vs static widths",
    )
    print(f"\nwrote {out / 'demo.json'}, {out / 'demo.md'}, {plot}")
    return rows
