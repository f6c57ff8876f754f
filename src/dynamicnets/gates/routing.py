"""Routing functions: per-sample weights over K kernels (experts) from a global descriptor.

A routing function *produces* routing weights; the layers of `cond_conv`,
`dynamic_conv` take them as a forward argument, so any routing (learned, fixed, from
another network) can drive any of them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import linear_flops

ACTIVATIONS = ("sigmoid", "softmax")


def check_temperature(temperature: float, where: str) -> float:
    """Return `temperature` as a float, or raise `ConfigError` unless it is a number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"{where}: temperature must be a number > 0, got {temperature!r}")
    if not temperature > 0:
        raise ConfigError(f"{where}: temperature must be > 0, got {temperature!r}")
    return float(temperature)


class RoutingFunction(nn.Module):
    """Global average pool -> linear (-> ReLU -> linear) -> sigmoid or softmax.

    `r = act(logits / temperature)`: CondConv uses `sigmoid` (Yang et al. 2019), DY-Conv
    `softmax` with a temperature annealed from about 30 to 1 during training (Chen et al.
    2020) and a hidden layer (`hidden_channels`, the paper uses `in_channels // 4`).

    Args:
        in_channels: channels `C` of the input feature map.
        num_experts: `K`, the number of routing weights per sample.
        activation: `"sigmoid"` (independent weights in (0, 1)) or `"softmax"` (weights
            summing to 1).
        temperature: default temperature, used when `forward` gets none; never changed by
            `forward` (pass the annealed value from a schedule instead).
        hidden_channels: `None` for a single linear layer, else the width of a hidden
            layer with ReLU.

    Shapes:
        `(B, C, *S) -> (B, K)`; any memory layout (pooling is a sum over `S` with the
        `1 / |S|` folded into the first linear layer).
    """

    def __init__(
        self,
        in_channels: int,
        num_experts: int,
        activation: str = "sigmoid",
        temperature: float = 1.0,
        *,
        hidden_channels: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for key, value in (("in_channels", in_channels), ("num_experts", num_experts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RoutingFunction: {key} must be a positive int, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"RoutingFunction: activation must be one of {ACTIVATIONS}, got {activation!r}"
            )
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.num_experts = num_experts
        self.activation = activation
        self.temperature = check_temperature(temperature, "RoutingFunction")
        if hidden_channels is None:
            self.hidden = None
            self.fc = nn.Linear(in_channels, num_experts, **factory)
        else:
            self.hidden = nn.Sequential(
                nn.Linear(in_channels, hidden_channels, **factory), nn.ReLU(inplace=True)
            )
            self.fc = nn.Linear(hidden_channels, num_experts, **factory)

    def logits(self, x: Tensor) -> Tensor:
        """`(B, C, *S) -> (B, K)` routing logits (before temperature and activation)."""
        return self._scaled_logits(x, 1.0)

    def forward(self, x: Tensor, temperature: float | None = None) -> Tensor:
        """`(B, C, *S) -> (B, K)` routing weights at `temperature` (module default if None)."""
        t = self.temperature if temperature is None else check_temperature(
            temperature, "RoutingFunction.forward"
        )
        logits = self._scaled_logits(x, 1.0 / t)
        return logits.sigmoid_() if self.activation == "sigmoid" else logits.softmax(dim=-1)

    def _scaled_logits(self, x: Tensor, scale: float) -> Tensor:
        """`scale * logits(x)`, in as few kernels as possible.

        The pooling's `1 / |S|` and `scale` (the inverse temperature) ride on the
        `alpha`/`beta` of the `addmm`s instead of separate divisions: at batch 1 each
        extra small kernel costs about 1-2% of the 64-channel 3x3 conv it routes
        (`benchmarks/dynamic_params_overhead.py`).
        """
        if x.ndim < 2 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"RoutingFunction: expected input (B, {self.in_channels}, ...), got "
                f"{tuple(x.shape)}"
            )
        spatial = tuple(range(2, x.ndim))
        pooled = x.sum(dim=spatial) if spatial else x
        inv_size = 1.0 / math.prod(x.shape[2:])
        if self.hidden is not None:
            first = self.hidden[0]
            pooled = torch.addmm(first.bias, pooled, first.weight.t(), alpha=inv_size).relu_()
            inv_size = 1.0
        fc = self.fc
        return torch.addmm(fc.bias, pooled, fc.weight.t(), beta=scale, alpha=inv_size * scale)

    def flops(self) -> int:
        """Per-sample FLOPs (the linear layers; pooling and activations are not counted)."""
        flops = linear_flops(self.fc)
        if self.hidden is not None:
            flops += linear_flops(self.hidden[0])
        return flops

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, temperature={self.temperature}"
