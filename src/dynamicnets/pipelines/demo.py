"""`make demo`: train static baselines on digits, then report accuracy, FLOPs and latency.

Three widths of `small_cnn` are trained on scikit-learn's digits (embedded, no download),
each checkpoint is scored on the seeded validation split, and the accuracy / FLOPs /
measured-latency table is printed and written (JSON + Markdown) with an accuracy-vs-FLOPs
plot and training curves under `out_dir`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..profiling.plots import plot_accuracy_vs_flops, plot_training_curves
from ..profiling.report import format_flops, markdown_table, print_table, write_json
from ..training import TrainConfig, Trainer
from .evaluate import EvalRequest, evaluate_checkpoint


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    data: str = "digits"
    model: str = "small_cnn"
    widths: list[int] = field(default_factory=lambda: [8, 16, 32])
    epochs: int = 25
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0
    threads: int | None = None
    progress: bool = True


COLUMNS = ["model", "width", "params", "flops", "accuracy", "latency_ms_batch1",
           "latency_ms_per_sample", "batch_size", "train_seconds"]


def run_demo(config: DemoConfig) -> list[dict]:
    """Train, score and report; returns one row per trained width."""
    out = Path(config.out_dir)
    rows = []
    for width in config.widths:
        name = f"{config.model}_w{width}"
        train_config = TrainConfig(
            name=name, model=config.model, model_args={"width": width}, data=config.data,
            val_size=0.2, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
            seed=config.seed, out_dir=str(out), progress=config.progress, threads=config.threads,
            overwrite=True,
        )
        start = time.perf_counter()
        trainer = Trainer(train_config)
        trainer.fit()
        seconds = time.perf_counter() - start
        result = evaluate_checkpoint(EvalRequest(checkpoint=str(out / name / "best.pt"), threads=config.threads))
        params = sum(p.numel() for p in trainer.model.parameters())
        rows.append({**result, "model": name, "width": width, "params": params,
                     "flops": format_flops(result["full_flops"]), "train_seconds": round(seconds, 1)})
        plot_training_curves(out / name / "metrics.jsonl", out / name / "curves.png")

    print()
    print_table(rows, COLUMNS, floatfmt={"accuracy": ".4f", "latency_ms_batch1": ".3f",
                                         "latency_ms_per_sample": ".4f"})
    write_json(out / "demo.json", rows)
    (out / "demo.md").write_text(markdown_table(rows, COLUMNS) + "\n")
    plot = plot_accuracy_vs_flops(
        {config.model: [(r["full_flops"], r["accuracy"]) for r in rows]},
        out / "accuracy_vs_flops.png", title=f"{config.data}: accuracy vs FLOPs (static widths)",
    )
    print(f"\nwrote {out / 'demo.json'}, {out / 'demo.md'}, {plot}")
    return rows
