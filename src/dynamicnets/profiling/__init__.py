"""Measuring and reporting: latency (`torch.utils.benchmark`), report tables and plots.

FLOP formulas and counters live in `dynamicnets.flops`.
"""
from .latency import Measurement, compare, measure, per_sample_ms, ratio, samples_per_second
from .plots import plot_accuracy_vs_flops, plot_grouped_bars, plot_training_curves
from .report import (
    atomic_write,
    format_flops,
    markdown_table,
    parse_flops,
    print_table,
    run_metadata,
    write_json,
)

__all__ = [
    "Measurement",
    "compare",
    "measure",
    "per_sample_ms",
    "ratio",
    "samples_per_second",
    "plot_accuracy_vs_flops",
    "plot_grouped_bars",
    "plot_training_curves",
    "atomic_write",
    "format_flops",
    "markdown_table",
    "parse_flops",
    "print_table",
    "run_metadata",
    "write_json",
]
