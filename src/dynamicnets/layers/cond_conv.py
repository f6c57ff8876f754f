"""CondConv: conditionally parameterized convolution (Yang et al., NeurIPS 2019).

`y = (sum_k r_k W_k) * x`: the K expert kernels are first mixed per sample with the
routing weights `r (B, K)`, then each sample is convolved with its own kernel. That
gives the same output as the mixture of experts `sum_k r_k (W_k * x)` (the convolution
is linear in the kernel) for the cost of one convolution plus a small kernel mix,
instead of K convolutions.

Execution (`per_sample_conv2d`): the mix is one matrix product `(B, K) @ (K, P)`; the
per-sample convolutions are one grouped convolution with the batch folded into the
groups; batch size 1 is a plain convolution. No Python loop over samples (one path
below loops over chunks of several samples). Folding needs the batch next to the
channels in memory, so the layout decides how:

- default layout `(B, C, H, W)`: the fold `(1, B*C, H, W)` is a free view.
- `channels_last` (memory `(B, H, W, C)`), no autograd recording (inference): the
  batch moves between the spatial axes and the channels, memory `(H, W, B, C)`, a copy
  of whole `C`-rows (cheap, unlike a `channels_last` -> default transpose, which moves
  single elements); the grouped convolution runs in `channels_last` (oneDNN's brgconv)
  on chunks of a few samples (`FOLDED_ROW_BYTES`) and writes a `channels_last` output.
  `CondConv2d` then mixes its kernels directly in `channels_last` order when it has
  fewer experts than samples (reordering K kernels instead of B).
- `channels_last` under autograd: the backward of that fold is slow (about 2.1x a
  static conv's training step at batch 32, against 1.7x), so the batch goes through
  the default-layout fold and the output is turned back to `channels_last`.

What limits the speed (`benchmarks/dynamic_params_overhead.py`, oneDNN on a 2-core
AVX-512 CPU): a grouped convolution over B per-sample kernels runs below a static
convolution's throughput (oneDNN reorders B kernels instead of one, and the groups'
data lies further apart), most of all against `channels_last` static convolutions;
the routing reads the whole input once more and the mix reads all K experts.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import conv_out_size, matmul_flops
from ..gates.routing import RoutingFunction

# channels_last folding: the grouped conv reads each group's pixels `n * C` values
# apart (n samples per fold), and oneDNN slows down as that stride grows. Measured on
# a 3x3, 64-channel, float32 conv at batch 32: 2-8 samples per fold about 1.3x a
# static conv, 16 samples 1.5x, all 32 samples 1.9x. So the batch is folded in chunks
# whose pixel row (`n * C * itemsize` bytes) stays within this, of at least 2 samples.
FOLDED_ROW_BYTES = 2048


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
        x: `(B, C, H, W)`, default layout or `channels_last`.
        kernels: `(B, O, C // groups, kh, kw)`, sample `b` uses `kernels[b]`; any strides
            (`channels_last`-ordered kernels, memory `(B, O, kh, kw, C // groups)`, save
            a copy when `x` is `channels_last`).
        bias: `(B, O)` or None.
        stride, padding, dilation, groups: as `F.conv2d`, per sample.

    Returns:
        `(B, O, H', W')`, in `x`'s layout. FLOPs (as `FlopCounterMode` counts): those of
        `B` ordinary convolutions; the folding reshapes are free.
    """
    batch = x.shape[0]
    if kernels.ndim != 5 or kernels.shape[0] != batch:
        raise ConfigError(
            f"per_sample_conv2d: kernels must be (B={batch}, O, C/groups, kh, kw), got "
            f"{tuple(kernels.shape)}"
        )
    channels_last = is_channels_last(x)
    if batch == 1:
        # a channels_last kernel would switch the whole conv (and its output) to channels_last
        kernel = kernels[0] if channels_last else kernels[0].contiguous()
        bias = None if bias is None else bias[0]
        return F.conv2d(x, kernel, bias, stride, padding, dilation, groups)
    if channels_last and not records_grad(x, kernels, bias):
        return _fold_channels_last(x, kernels, bias, stride, padding, dilation, groups)
    y = _fold_default(x, kernels, bias, stride, padding, dilation, groups)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def is_channels_last(x: Tensor) -> bool:
    """True when `x (B, C, H, W)` is laid out `channels_last` and not also contiguous."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def records_grad(*tensors: Tensor | None) -> bool:
    """True when autograd records an op on `tensors` (grad mode on, one needs a grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _fold_default(x, kernels, bias, stride, padding, dilation, groups):
    batch, channels, height, width = x.shape
    out_channels = kernels.shape[1]
    folded = F.conv2d(
        x.reshape(1, batch * channels, height, width),
        kernels.reshape(batch * out_channels, *kernels.shape[2:]).contiguous(),
        None if bias is None else bias.reshape(batch * out_channels),
        stride,
        padding,
        dilation,
        batch * groups,
    )
    return folded.view(batch, out_channels, folded.shape[-2], folded.shape[-1])


def _fold_channels_last(x, kernels, bias, stride, padding, dilation, groups):
    batch, channels = x.shape[:2]
    out_channels = kernels.shape[1]
    chunk = max(2, FOLDED_ROW_BYTES // (channels * x.element_size()))
    out = None  # (B, H', W', O), filled chunk by chunk
    for start in range(0, batch, chunk):
        n = min(chunk, batch - start)
        part = x[start : start + n]
        # (n, C, H, W) in memory (n, H, W, C) -> (1, n*C, H, W) in memory (H, W, n, C)
        folded = part.permute(2, 3, 0, 1).reshape(*part.shape[2:], 1, n * channels)
        kernel = kernels[start : start + n].reshape(n * out_channels, *kernels.shape[2:])
        y = F.conv2d(
            folded.permute(2, 3, 0, 1),
            kernel.contiguous(memory_format=torch.channels_last),
            None if bias is None else bias[start : start + n].reshape(n * out_channels),
            stride,
            padding,
            dilation,
            n * groups,
        )
        # (1, n*O, H', W') in memory (H', W', n, O) -> (n, H', W', O)
        y = y.permute(0, 2, 3, 1).reshape(*y.shape[2:], n, out_channels).permute(2, 0, 1, 3)
        if out is None:
            out = y.new_empty((batch, *y.shape[1:]))
        out[start : start + n] = y
    return out.permute(0, 3, 1, 2)  # (B, O, H', W'), channels_last


class CondConv2d(nn.Module):
    """K expert kernels mixed per sample by routing weights taken as a forward argument.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: as `nn.Conv2d`
            (`kernel_size`, `stride`, `dilation` an int or an `(h, w)` pair; stored as an
            int when both entries are equal).
        padding: an int, an `(h, w)` pair, or `None` for "same"-style
            `dilation * (kernel_size // 2)` per dim.
        num_experts: `K`.
        bias: one bias vector per expert, mixed like the kernels.

    Attributes:
        weight: `(K, out_channels, in_channels // groups, kh, kw)`.
        bias: `(K, out_channels)` or None.

    Shapes:
        `forward(x (B, C_in, H, W), routing_weights (B, K)) -> (B, C_out, H', W')`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        num_experts: int = 4,
        bias: bool = False,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kernel = conv_pair("CondConv2d", "kernel_size", kernel_size)
        steps = conv_pair("CondConv2d", "stride", stride)
        dilations = conv_pair("CondConv2d", "dilation", dilation)
        if padding is None:
            padding = tuple(d * (k // 2) for d, k in zip(dilations, kernel))
        pads = conv_pair("CondConv2d", "padding", padding, minimum=0)
        kernel_size, stride, padding, dilation = (
            _square(kernel), _square(steps), _square(pads), _square(dilations)
        )
        check_conv_args(
            "CondConv2d", in_channels, out_channels, kernel[0], steps[0], dilations[0], groups
        )
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise ConfigError(
                f"CondConv2d: num_experts must be a positive int, got {num_experts!r}"
            )
        factory = {"device": device, "dtype": dtype}
        store_conv_geometry(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups
        )
        self.num_experts = num_experts
        self.weight = nn.Parameter(
            torch.empty(
                num_experts, out_channels, in_channels // groups, *kernel, **factory,
            )
        )
        self.bias = (
            nn.Parameter(torch.empty(num_experts, out_channels, **factory)) if bias else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert as a He-initialised conv (fan-out, ReLU gain); biases like `nn.Conv2d`."""
        taps = math.prod(self.weight.shape[-2:])
        fan_out = self.out_channels * taps
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))
        if self.bias is not None:
            bound = 1.0 / math.sqrt((self.in_channels // self.groups) * taps)
            nn.init.uniform_(self.bias, -bound, bound)

    def expert_params(self) -> int:
        """Parameters of one expert (kernel + bias)."""
        return self.weight[0].numel() + (0 if self.bias is None else self.out_channels)

    def aggregate(
        self, routing_weights: Tensor, channels_last: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Mix the experts: `(B, K) -> kernels (B, O, C/groups, k, k), bias (B, O) | None`.

        `channels_last=True` returns the kernels ordered in memory as
        `(B, O, k, k, C/groups)` when that is cheaper to produce here than in
        `per_sample_conv2d` (fewer experts than samples: reorder K kernels, not B).
        """
        self._check_routing(routing_weights)
        return self._mix(routing_weights, channels_last)

    def _mix(
        self, routing_weights: Tensor, channels_last: bool
    ) -> tuple[Tensor, Tensor | None]:
        batch, experts = routing_weights.shape
        bias = None if self.bias is None else routing_weights @ self.bias
        if channels_last and experts < batch:
            weight = self.weight.permute(0, 1, 3, 4, 2)  # (K, O, k, k, C/groups)
            kernels = routing_weights @ weight.reshape(experts, -1)
            return kernels.view(batch, *weight.shape[1:]).permute(0, 1, 4, 2, 3), bias
        kernels = routing_weights @ self.weight.view(experts, -1)
        return kernels.view(batch, *self.weight.shape[1:]), bias

    def forward(self, x: Tensor, routing_weights: Tensor) -> Tensor:
        """`x (B, C_in, H, W)`, `routing_weights (B, K)` -> `(B, C_out, H', W')` in `x`'s layout."""
        self._check_input(x, routing_weights)
        # the kernels per_sample_conv2d wants in channels_last (its no-autograd fold)
        channels_last = is_channels_last(x) and not records_grad(x, routing_weights, self.weight)
        kernels, bias = self._mix(routing_weights, channels_last)
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
        (kh, kw), (sh, sw) = _pair(self.kernel_size), _pair(self.stride)
        (ph, pw), (dh, dw) = _pair(self.padding), _pair(self.dilation)
        return conv_out_size(height, kh, sh, ph, dh), conv_out_size(width, kw, sw, pw, dw)

    def conv_flops(self, height: int, width: int) -> int:
        """Per-sample FLOPs of the convolution alone on a `(C_in, height, width)` input."""
        oh, ow = self.output_size(height, width)
        return 2 * self.weight[0].numel() * oh * ow

    def aggregation_flops(self) -> int:
        """Per-sample FLOPs of mixing the experts (a `(1, K) @ (K, P)` matrix product)."""
        return matmul_flops(1, self.num_experts, self.expert_params())

    def flops(self, height: int, width: int) -> int:
        """Per-sample FLOPs of `forward` (aggregation + convolution), as `FlopCounterMode`."""
        return self.aggregation_flops() + self.conv_flops(height, width)

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
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
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

    def flops(self, height: int, width: int) -> int:
        """Per-sample FLOPs: routing + kernel aggregation + convolution."""
        return self.routing.flops() + self.conv.flops(height, width)


def conv_pair(where: str, key: str, value, minimum: int = 1) -> tuple[int, int]:
    """`value` (an int or an `(h, w)` pair of ints `>= minimum`) as a pair.

    Raises:
        ConfigError: naming `where` and `key`, for anything else.
    """
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair)
    ):
        raise ConfigError(
            f"{where}: {key} must be an int >= {minimum} or a pair of them, got {value!r}"
        )
    return int(pair[0]), int(pair[1])


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _square(pair: tuple[int, int]) -> int | tuple[int, int]:
    """An int when both entries are equal (the attributes of square convs stay ints)."""
    return pair[0] if pair[0] == pair[1] else pair


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
