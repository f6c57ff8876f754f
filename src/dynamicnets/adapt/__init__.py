"""Apply the library's mechanisms to your own `nn.Module`.

- `add_exits`: early exits on the stages of your backbone (`exits`).
- `gate_residual_blocks`: per-sample skipping of your shape-preserving blocks, compact at
  inference (`gating`).
- `swap_convs`: CondConv / DY-Conv in place of your `nn.Conv2d` layers (`convs`).
- `make_slimmable`: a plain conv net run at several widths from one set of weights, with
  a clear refusal where the structure does not allow it (`slimmable`).
- `MoEFeedForward`: a drop-in mixture-of-experts MLP block returning a plain tensor, and
  `collect_aux_losses`, the one way to gather its losses and FLOPs (`moe`).

Train any of them from your own loop with `dynamicnets.training.dynamic_loss`.
"""
from .convs import dynamic_conv_like, swap_convs
from .exits import add_exits, pooled_linear_head
from .gating import GatedBlock, GatedModel, gate_residual_blocks
from .moe import AuxLosses, MoEFeedForward, collect_aux_losses
from .slimmable import SlimmableChain, make_slimmable

__all__ = [
    "AuxLosses",
    "GatedBlock",
    "GatedModel",
    "MoEFeedForward",
    "SlimmableChain",
    "add_exits",
    "collect_aux_losses",
    "dynamic_conv_like",
    "gate_residual_blocks",
    "make_slimmable",
    "pooled_linear_head",
    "swap_convs",
]
