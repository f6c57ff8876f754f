"""`make demo`: an early-exit network against static baselines on digits, in minutes on a CPU.

1. Train three widths of the static `small_cnn` and one `multi_exit_cnn` (three exits) on
   scikit-learn's digits (embedded, no download).
2. For the multi-exit network, calibrate max-probability thresholds for several mean-FLOPs
   budgets on one seeded half of the validation split and score them on the other half,
   with the compact executor (samples that exit leave the batch).
3. Print and write (JSON + Markdown) the accuracy / FLOPs / measured-latency table, with
   the speedup FLOPs promise next to the one the clock shows (both on the same samples:
   the evaluation half is small enough to be timed whole), and plot accuracy vs FLOPs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..profiling.plots import plot_accuracy_vs_flops, plot_training_curves
from ..profiling.report import format_flops, markdown_table, print_table, write_json
from ..training import TrainConfig, Trainer
from .early_exit import EarlyExitRequest
from .evaluate import EvalRequest, evaluate_checkpoint


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    data: str = "digits"
    static_model: str = "small_cnn"
    static_widths: list[int] = field(default_factory=lambda: [8, 16, 32])
    dynamic_model: str = "multi_exit_cnn"
    dynamic_width: int = 32
    budgets: int = 6  # mean-FLOPs budgets between the first and the last exit
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0
    threads: int | None = None
    min_run_time: float = 0.3  # seconds per timed callable and round
    progress: bool = True


COLUMNS = ["model", "budget", "accuracy", "mean_flops", "speedup_flops", "speedup_measured",
           "latency_ms_per_sample", "exit_histogram"]


def _train(config: DemoConfig, name: str, model: str, width: int) -> tuple[Path, float]:
    out = Path(config.out_dir)
    train_config = TrainConfig(
        name=name, model=model, model_args={"width": width}, data=config.data, val_size=0.3,
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        out_dir=str(out), progress=config.progress, threads=config.threads, overwrite=True,
    )
    start = time.perf_counter()
    Trainer(train_config).fit()
    plot_training_curves(out / name / "metrics.jsonl", out / name / "curves.png")
    return out / name / "best.pt", time.perf_counter() - start


def run_demo(config: DemoConfig) -> list[dict]:
    """Train, calibrate, score and report; returns the table rows."""
    out = Path(config.out_dir)

    def score(checkpoint: Path, early_exit: EarlyExitRequest | None = None, anytime: bool = False) -> dict:
        return evaluate_checkpoint(EvalRequest(checkpoint=str(checkpoint), threads=config.threads,
                                               min_run_time=config.min_run_time, early_exit=early_exit,
                                               anytime=anytime))

    rows = []
    for width in config.static_widths:
        ckpt, _ = _train(config, f"{config.static_model}_w{width}", config.static_model, width)
        result = score(ckpt)
        rows.append({**result, "model": f"{config.static_model} w{width} (static)", "budget": "-",
                     "mean_flops": result["full_flops"], "speedup_measured": 1.0})

    name = f"{config.dynamic_model}_w{config.dynamic_width}"
    ckpt, _ = _train(config, name, config.dynamic_model, config.dynamic_width)
    probe = score(ckpt, anytime=True)
    costs = probe["exit_costs"]
    steps = max(config.budgets - 1, 1)
    budgets = [costs[0] + (costs[-1] - costs[0]) * i / steps for i in range(config.budgets)]
    dynamic = []
    for budget in budgets:
        result = score(ckpt, EarlyExitRequest(budget_flops=budget))
        dynamic.append({**result, "model": f"{config.dynamic_model} (early exit)", "budget": format_flops(budget)})
    rows += dynamic

    for row in rows:
        row["mean_flops"] = format_flops(row["mean_flops"])
    print()
    print_table(rows, COLUMNS, floatfmt={"accuracy": ".4f", "speedup_flops": ".2f", "speedup_measured": ".2f",
                                         "latency_ms_per_sample": ".4f"})
    print("\nanytime (each exit alone, the whole validation split):")
    print_table(probe["anytime"], floatfmt={"accuracy": ".4f"})
    write_json(out / "demo.json", rows)
    (out / "demo.md").write_text(markdown_table(rows, COLUMNS) + "\n")
    plot = plot_accuracy_vs_flops(
        {f"{config.dynamic_model} (calibrated budgets)": [(r["full_flops"] / r["speedup_flops"], r["accuracy"])
                                                        for r in dynamic],
         f"{config.static_model} widths (static)": [(r["full_flops"], r["accuracy"])
                                                    for r in rows[:len(config.static_widths)]]},
        out / "accuracy_vs_flops.png", title=f"{config.data}: early exits vs static networks",
    )
    print(f"\nwrote {out / 'demo.json'}, {out / 'demo.md'}, {plot}")
    return rows
