"""Conv experts: `E` convolutions with stacked kernels, each run on its own samples only.

The conv analogue of `experts.MLPExperts` for sample-level mixtures of experts
(`conv_moe.ConvMoE`): a row is a whole sample `(C, H, W)` (`row_dims = 3`), so
`moe.MoELayer` and `moe.dense_moe` run them like MLP experts run tokens.

Each expert is ONE convolution (kernel, stride, padding, optional bias). Norms and
activations stay outside, shared by all experts and applied after the experts' outputs
are combined: a batch norm inside an expert would collect statistics over whichever
samples the router sent it, which differ between the sparse and the dense execution.
A single conv is linear in its kernel, so a dense soft mix of all experts equals one
conv with the mixed kernel (`CondConv2d`); the sparse dispatch pays off when few of
many experts run per sample.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import conv_out_size
from .cond_conv import check_conv_args, store_conv_geometry


class ConvExperts(nn.Module):
    """`num_experts` convolutions `conv2d(x, weight[e], bias[e], stride, padding)`.

    Args:
        num_experts: `E`.
        in_channels, out_channels, kernel_size, stride: of each expert's conv (square).
        padding: None for `kernel_size // 2` ("same" at stride 1).
        bias: learn a bias per expert (leave False when a norm follows).

    Attributes:
        weight: `(E, C_out, C_in, k, k)`; bias: `(E, C_out)` or None.
        row_dims: 3, a row is one sample `(C_in, H, W)`.

    Shapes:
        `forward_expert(e, x)`: `(n, C_in, H, W) -> (n, C_out, H', W')`.
        `forward_grouped(x, counts)`: `(N, C_in, H, W)` samples sorted by expert
        (`counts[e]` of them for expert `e`) -> `(N, C_out, H', W')`.
        `forward_dense(x)`: `(B, C_in, H, W) -> (E, B, C_out, H', W')` (every expert on
        every sample).
    """

    row_dims = 3

    def __init__(
        self,
        num_experts: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        *,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_conv_args("ConvExperts", in_channels, out_channels, kernel_size, stride, 1, 1)
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise ConfigError(
                f"ConvExperts: num_experts must be a positive int, got {num_experts!r}"
            )
        if padding is not None and (not isinstance(padding, int) or padding < 0):
            raise ConfigError(
                f"ConvExperts: padding must be None or an int >= 0, got {padding!r}"
            )
        store_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, 1, 1)
        factory = {"device": device, "dtype": dtype}
        self.num_experts = num_experts
        self.weight = nn.Parameter(
            torch.empty(num_experts, out_channels, in_channels, kernel_size, kernel_size, **factory)
        )
        self.bias = (
            nn.Parameter(torch.empty(num_experts, out_channels, **factory)) if bias else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert He-initialised (fan-out, ReLU gain) like `ConvNormAct`'s convs;
        biases as `nn.Conv2d`'s."""
        fan_out = self.out_channels * self.kernel_size**2
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """`(H', W')` of an expert's output on an `(H, W)` input."""
        k, s, p = self.kernel_size, self.stride, self.padding
        return conv_out_size(height, k, s, p), conv_out_size(width, k, s, p)

    def forward_expert(self, e: int, x: Tensor) -> Tensor:
        """Expert `e` on its samples: `(n, C_in, H, W) -> (n, C_out, H', W')`."""
        bias = None if self.bias is None else self.bias[e]
        return F.conv2d(x, self.weight[e], bias, self.stride, self.padding)

    def forward_grouped(self, x: Tensor, counts: Sequence[int]) -> Tensor:
        """Samples sorted by expert, `counts[e]` for expert `e`: `(N, C_in, H, W) ->
        (N, C_out, H', W')`. Each expert convolves a view of its own block; experts with
        no samples are skipped."""
        counts = [int(n) for n in counts]
        if len(counts) != self.num_experts or sum(counts) != x.shape[0]:
            raise ConfigError(
                f"ConvExperts: counts must give {self.num_experts} sample counts summing to "
                f"{x.shape[0]}, got {counts}"
            )
        outputs = [
            self.forward_expert(e, block) for e, block in enumerate(x.split(counts)) if len(block)
        ]
        if not outputs:
            return self.forward_expert(0, x)  # no samples: an empty batch of the right shape
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def forward_dense(self, x: Tensor) -> Tensor:
        """Every expert on every sample, one conv with `E * C_out` output channels:
        `(B, C_in, H, W) -> (E, B, C_out, H', W')`."""
        e, c_out = self.num_experts, self.out_channels
        bias = None if self.bias is None else self.bias.reshape(e * c_out)
        kernel = self.weight.reshape(e * c_out, *self.weight.shape[2:])
        y = F.conv2d(x, kernel, bias, self.stride, self.padding)
        return y.unflatten(1, (e, c_out)).transpose(0, 1)

    def flops(self, rows: int, height: int, width: int) -> int:
        """FLOPs of `rows` sample-expert rows on `(C_in, height, width)` inputs, as
        `FlopCounterMode` counts them (2 per multiply-add; the bias not counted)."""
        oh, ow = self.output_size(height, width)
        return 2 * rows * self.out_channels * self.in_channels * self.kernel_size**2 * oh * ow

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, {self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}"
        )
