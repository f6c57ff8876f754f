"""Costs: FLOPs (analytic + FlopCounterMode), latency, reports and plots."""
from .flops import conv1d_flops, conv2d_flops, conv_out_size, counted_flops, linear_flops
from .latency import Measurement, compare, measure, per_sample_ms, ratio, samples_per_second
from .plots import plot_accuracy_vs_flops, plot_training_curves
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
    "conv1d_flops",
    "conv2d_flops",
    "conv_out_size",
    "counted_flops",
    "linear_flops",
    "Measurement",
    "compare",
    "measure",
    "per_sample_ms",
    "ratio",
    "samples_per_second",
    "plot_accuracy_vs_flops",
    "plot_training_curves",
    "atomic_write",
    "format_flops",
    "markdown_table",
    "parse_flops",
    "print_table",
    "run_metadata",
    "write_json",
]
