"""CondConv: conditionally parameterized convolution (Yang et al., NeurIPS 2019).

`y = (sum_k r_k W_k) * x`: the K expert kernels are first mixed per sample with the
routing weights `r (B, K)`, then each sample is convolved with its own kernel. That
gives the same output as the mixture of experts `sum_k r_k (W_k * x)` (the convolution
is linear in the kernel) for the cost of one convolution plus a small kernel mix,
instead of K convolutions.

Execution: the mix is one matrix product `(B, K) @ (K, P)`; the per-sample
convolutions are ONE grouped convolution with the batch folded into the groups
(`(1, B*C, H, W)` input, `B*groups` groups); batch size 1 needs no folding. No Python
loop over samples.

Layout: folding needs the batch and channel axes adjacent, so a `channels_last` batch
is copied to the default layout first and the output comes back in it. On this
project's 2-core CPU a static 3x3 conv runs about 2x faster in `channels_last` at batch
32, which the grouped per-sample conv cannot match (see
`benchmarks/dynamic_params_overhead.py`); at batch 1 the kernel follows the input's
layout.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..profiling.flops import conv_out_size
from .routing import RoutingFunction


def per_sample_conv2d(
    x: Tensor,
    kernels: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
) -> Tensor:
    """Convolve each sample with its own kernel, as one grouped convolution.

    Args:
        x: `(B, C, H, W)`.
        kernels: `(B, O, C // groups, kh, kw)`, sample `b` uses `kernels[b]`.
        bias: `(B, O)` or None.
        stride, padding, dilation, groups: as `F.conv2d`, per sample.

    Returns:
        `(B, O, H', W')`. FLOPs (as `FlopCounterMode` counts): those of `B` ordinary
        convolutions; the folding reshapes are free.
    """
    batch, channels, height, width = x.shape
    if kernels.ndim != 5 or kernels.shape[0] != batch:
        raise ConfigError(
            f"per_sample_conv2d: kernels must be (B={batch}, O, C/groups, kh, kw), got "
            f"{tuple(kernels.shape)}"
        )
    out_channels = kernels.shape[1]
    if batch == 1:
        kernel = kernels[0]
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # the conv runs fastest with input and kernel in the same layout
            kernel = kernel.contiguous(memory_format=torch.channels_last)
        return F.conv2d(
            x, kernel, None if bias is None else bias[0], stride, padding, dilation, groups
        )
    folded = F.conv2d(
        x.reshape(1, batch * channels, height, width),
        kernels.reshape(batch * out_channels, *kernels.shape[2:]),
        None if bias is None else bias.reshape(batch * out_channels),
        stride,
        padding,
        dilation,
        batch * groups,
    )
    return folded.view(batch, out_channels, folded.shape[-2], folded.shape[-1])


class CondConv2d(nn.Module):
    """K expert kernels mixed per sample by routing weights taken as a forward argument.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: as `nn.Conv2d`
            (square kernels).
        padding: `None` for "same"-style `dilation * (kernel_size // 2)`.
        num_experts: `K`.
        bias: one bias vector per expert, mixed like the kernels.

    Attributes:
        weight: `(K, out_channels, in_channels // groups, k, k)`.
        bias: `(K, out_channels)` or None.

    Shapes:
        `forward(x (B, C_in, H, W), routing_weights (B, K)) -> (B, C_out, H', W')`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        num_experts: int = 4,
        bias: bool = False,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_conv_args(
            "CondConv2d", in_channels, out_channels, kernel_size, stride, dilation, groups
        )
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise ConfigError(
                f"CondConv2d: num_experts must be a positive int, got {num_experts!r}"
            )
        factory = {"device": device, "dtype": dtype}
        store_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self.num_experts = num_experts
        self.weight = nn.Parameter(
            torch.empty(
                num_experts, out_channels, in_channels // groups, kernel_size, kernel_size,
                **factory,
            )
        )
        self.bias = (
            nn.Parameter(torch.empty(num_experts, out_channels, **factory)) if bias else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert as a He-initialised conv (fan-out, ReLU gain); biases like `nn.Conv2d`."""
        fan_out = self.out_channels * self.kernel_size**2
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))
        if self.bias is not None:
            bound = 1.0 / math.sqrt((self.in_channels // self.groups) * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)

    def expert_params(self) -> int:
        """Parameters of one expert (kernel + bias)."""
        return self.weight[0].numel() + (0 if self.bias is None else self.out_channels)

    def aggregate(self, routing_weights: Tensor) -> tuple[Tensor, Tensor | None]:
        """Mix the experts: `(B, K) -> kernels (B, O, C/groups, k, k), bias (B, O) | None`."""
        self._check_routing(routing_weights)
        return self._mix(routing_weights)

    def _mix(self, routing_weights: Tensor) -> tuple[Tensor, Tensor | None]:
        batch = routing_weights.shape[0]
        kernels = (routing_weights @ self.weight.view(self.num_experts, -1)).view(
            batch, *self.weight.shape[1:]
        )
        bias = None if self.bias is None else routing_weights @ self.bias
        return kernels, bias

    def forward(self, x: Tensor, routing_weights: Tensor) -> Tensor:
        """`x (B, C_in, H, W)`, `routing_weights (B, K)` -> `(B, C_out, H', W')`."""
        self._check_input(x, routing_weights)
        kernels, bias = self._mix(routing_weights)
        return per_sample_conv2d(
            x, kernels, bias, self.stride, self.padding, self.dilation, self.groups
        )

    def mixture_of_experts_reference(self, x: Tensor, routing_weights: Tensor) -> Tensor:
        """`sum_k r_k (W_k * x + b_k)`: the same output as `forward`, from K convolutions.

        For tests and cost comparisons only (K times the convolution FLOPs).
        Shapes as `forward`.
        """
        self._check_input(x, routing_weights)
        out = None
        for k in range(self.num_experts):
            y = F.conv2d(
                x,
                self.weight[k],
                None if self.bias is None else self.bias[k],
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
            y = routing_weights[:, k, None, None, None] * y
            out = y if out is None else out + y
        return out

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        return conv_out_size(height, k, s, p, d), conv_out_size(width, k, s, p, d)

    def conv_cost(self, height: int, width: int) -> int:
        """Per-sample FLOPs of the convolution alone on a `(C_in, height, width)` input."""
        oh, ow = self.output_size(height, width)
        return 2 * self.weight[0].numel() * oh * ow

    def aggregation_cost(self) -> int:
        """Per-sample FLOPs of mixing the experts (a `(1, K) @ (K, P)` matrix product)."""
        return 2 * self.num_experts * self.expert_params()

    def cost(self, height: int, width: int) -> int:
        """Per-sample FLOPs of `forward` (aggregation + convolution), as `FlopCounterMode`."""
        return self.aggregation_cost() + self.conv_cost(height, width)

    def _check_routing(self, routing_weights: Tensor) -> None:
        if routing_weights.ndim != 2 or routing_weights.shape[1] != self.num_experts:
            raise ConfigError(
                f"CondConv2d: routing_weights must be (B, K={self.num_experts}), got "
                f"{tuple(routing_weights.shape)}"
            )

    def _check_input(self, x: Tensor, routing_weights: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"CondConv2d: expected x of shape (B, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}"
            )
        self._check_routing(routing_weights)
        if routing_weights.shape[0] != x.shape[0]:
            raise ConfigError(
                f"CondConv2d: routing_weights has {routing_weights.shape[0]} rows for a batch "
                f"of {x.shape[0]}"
            )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, num_experts={self.num_experts}, bias={self.bias is not None}"
        )


class RoutedCondConv2d(nn.Module):
    """`CondConv2d` bundled with a routing function computed from its own input.

    Args:
        in_channels ... bias: as `CondConv2d`.
        activation: of the routing function, `"sigmoid"` as in the CondConv paper.
        temperature: default routing temperature.
        hidden_channels: hidden width of the routing function (None: one linear layer).

    Attributes:
        routing: `RoutingFunction`, `(B, C_in, H, W) -> (B, K)`.
        conv: `CondConv2d`.

    Shapes:
        `(B, C_in, H, W) -> (B, C_out, H', W')`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        num_experts: int = 4,
        bias: bool = False,
        *,
        activation: str = "sigmoid",
        temperature: float = 1.0,
        hidden_channels: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.routing = RoutingFunction(
            in_channels, num_experts, activation, temperature,
            hidden_channels=hidden_channels, **factory,
        )
        self.conv = CondConv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            num_experts, bias, **factory,
        )

    def forward_with_routing(
        self, x: Tensor, temperature: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """`(B, C_in, H, W) -> (output (B, C_out, H', W'), routing weights (B, K))`."""
        routing_weights = self.routing(x, temperature)
        return self.conv(x, routing_weights), routing_weights

    def forward(self, x: Tensor, temperature: float | None = None) -> Tensor:
        return self.forward_with_routing(x, temperature)[0]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return self.conv.output_size(height, width)

    def cost(self, height: int, width: int) -> int:
        """Per-sample FLOPs: routing + kernel aggregation + convolution."""
        return self.routing.cost() + self.conv.cost(height, width)


def check_conv_args(
    where: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    dilation: int,
    groups: int,
) -> None:
    """Raise `ConfigError` naming `where` unless the conv sizes are positive and consistent."""
    values = {
        "in_channels": in_channels, "out_channels": out_channels, "kernel_size": kernel_size,
        "stride": stride, "dilation": dilation, "groups": groups,
    }
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {key} must be a positive int, got {value!r}")
    if in_channels % groups or out_channels % groups:
        raise ConfigError(
            f"{where}: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
            f"divisible by groups ({groups})"
        )


def store_conv_geometry(
    module: nn.Module,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    padding: int | None,
    dilation: int,
    groups: int,
) -> None:
    """Set the usual conv attributes on `module`; `padding=None` keeps the size ("same")."""
    module.in_channels = in_channels
    module.out_channels = out_channels
    module.kernel_size = kernel_size
    module.stride = stride
    module.padding = dilation * (kernel_size // 2) if padding is None else padding
    module.dilation = dilation
    module.groups = groups
