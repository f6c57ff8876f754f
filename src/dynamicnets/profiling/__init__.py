"""Costs: FLOPs (analytic + FlopCounterMode), latency, reports and plots."""
from .flops import conv1d_flops, conv2d_flops, conv_out_size, counted_flops, linear_flops

__all__ = ["conv1d_flops", "conv2d_flops", "conv_out_size", "counted_flops", "linear_flops"]
