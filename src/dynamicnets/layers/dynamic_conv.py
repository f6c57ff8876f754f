"""DY-Conv: dynamic convolution with softmax attention over K kernels (Chen et al., CVPR 2020).

The attention is `softmax(z / tau)` with `z` from global pooling -> FC (C -> C/4) ->
ReLU -> FC (-> K). The paper trains with a large temperature (about 30) annealed to 1
early in training, so every kernel gets gradient at first; the temperature is a forward
argument here, e.g. from `dynamicnets.gates.schedules.LinearDecay(30.0, 1.0, steps)`:

    layer(x, temperature=schedule(step))

Kernels are mixed and applied exactly as in `CondConv2d` (one matrix product, one
grouped convolution over the batch).
"""
from __future__ import annotations

from ..errors import ConfigError
from .cond_conv import RoutedCondConv2d


class DynamicConv2d(RoutedCondConv2d):
    """`RoutedCondConv2d` with DY-Conv's attention: softmax with temperature, hidden layer.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as `CondConv2d`.
        num_experts: `K` kernels (4 in the paper).
        reduction: hidden width of the attention is `max(in_channels // reduction,
            min_hidden)`.
        min_hidden: lower bound of the hidden width.
        temperature: default softmax temperature (1.0, the value after annealing).

    Attributes:
        routing: the attention, `(B, C_in, H, W) -> (B, K)` summing to 1.
        conv: `CondConv2d` holding the K kernels.

    Shapes:
        `forward(x (B, C_in, H, W), temperature=None) -> (B, C_out, H', W')`.
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
        reduction: int = 4,
        min_hidden: int = 4,
        temperature: float = 1.0,
        device=None,
        dtype=None,
    ) -> None:
        for key, value in (("reduction", reduction), ("min_hidden", min_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DynamicConv2d: {key} must be a positive int, got {value!r}")
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            num_experts, bias,
            activation="softmax",
            temperature=temperature,
            hidden_channels=max(in_channels // reduction, min_hidden),
            device=device,
            dtype=dtype,
        )
