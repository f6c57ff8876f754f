"""`DynamicConvNormAct`: conv -> BatchNorm -> activation, with the conv and activation
chosen by name, so one model definition covers static, CondConv, DY-Conv, WeightNet
and DY-ReLU variants.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...layers.cond_conv import RoutedCondConv2d
from ...layers.dy_relu import DyReLU
from ...layers.dynamic_conv import DynamicConv2d
from ...layers.weightnet import WeightNetConv2d
from ...outputs import DynamicOutput, constant_flops
from ...flops import conv2d_flops

CONVS = ("static", "condconv", "dyconv", "weightnet")
ACTIVATIONS = ("relu", "relu6", "dyrelu_a", "dyrelu_b", "dyrelu_c", "none")


def check_choices(model: str, conv: str, activation: str) -> None:
    """Raise `ConfigError` naming `model` unless `conv` and `activation` are known names."""
    if conv not in CONVS:
        raise ConfigError(f"model {model!r}: conv must be one of {CONVS}, got {conv!r}")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"model {model!r}: activation must be one of {ACTIVATIONS}, got {activation!r}"
        )


def make_activation(kind: str, channels: int, *, device=None, dtype=None) -> nn.Module:
    """`nn.ReLU`, `nn.ReLU6`, `DyReLU` of variant A/B/C, or `nn.Identity` for `"none"`."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "relu6":
        return nn.ReLU6(inplace=True)
    if kind.startswith("dyrelu_"):
        return DyReLU(channels, kind[-1].upper(), device=device, dtype=dtype)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


def make_conv(
    kind: str,
    in_chans: int,
    out_chans: int,
    kernel_size: int,
    stride: int,
    groups: int,
    num_experts: int,
    *,
    device=None,
    dtype=None,
) -> nn.Module:
    """A bias-free conv of `kind` (`CONVS`) with padding `kernel_size // 2`."""
    factory = {"device": device, "dtype": dtype}
    args = (in_chans, out_chans, kernel_size, stride, kernel_size // 2, 1, groups)
    if kind == "static":
        conv = nn.Conv2d(*args, bias=False, **factory)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        return conv
    if kind == "condconv":
        return RoutedCondConv2d(*args, num_experts, **factory)
    if kind == "dyconv":
        return DynamicConv2d(*args, num_experts, **factory)
    if kind == "weightnet":
        # The paper's G = 2 groups per output channel where the kernel splits evenly
        # (not for 3x3 depthwise kernels of 9 values).
        per_kernel = (in_chans // groups) * kernel_size**2
        return WeightNetConv2d(*args, fc_groups=2 if per_kernel % 2 == 0 else 1, **factory)
    raise ConfigError(f"unknown conv {kind!r}; expected one of {CONVS}")


class DynamicConvNormAct(nn.Module):
    """`conv -> BatchNorm2d -> activation`, conv and activation picked by name.

    Args:
        in_chans, out_chans, kernel_size, stride, groups: of the convolution.
        conv: one of `CONVS`; `"condconv"`/`"dyconv"` route per sample with
            `num_experts` kernels, `"weightnet"` generates the kernel per sample.
        activation: one of `ACTIVATIONS`.

    Shapes:
        `forward(x (B, C_in, H, W), temperature=None) -> (y (B, C_out, H', W'),
        routing (B, K) or None)`; `temperature` reaches routed convs only.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        *,
        conv: str = "static",
        activation: str = "relu",
        num_experts: int = 4,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.kind = conv
        self.conv = make_conv(
            conv, in_chans, out_chans, kernel_size, stride, groups, num_experts, **factory
        )
        self.bn = nn.BatchNorm2d(out_chans, **factory)
        self.act = make_activation(activation, out_chans, **factory)
        self.out_chans = out_chans

    def forward(self, x: Tensor, temperature: float | None = None) -> tuple[Tensor, Tensor | None]:
        routing = None
        if isinstance(self.conv, RoutedCondConv2d):
            x, routing = self.conv.forward_with_routing(x, temperature)
        else:
            x = self.conv(x)
        return self.act(self.bn(x)), routing

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Per-sample FLOPs on a `(C, H, W)` input and the `(C', H', W')` output shape."""
        _, height, width = in_shape
        if isinstance(self.conv, nn.Conv2d):
            flops, oh, ow = conv2d_flops(self.conv, height, width)
        else:
            flops = self.conv.flops(height, width)
            oh, ow = self.conv.output_size(height, width)
        if isinstance(self.act, DyReLU):
            flops += self.act.flops(oh, ow)
        return flops, (self.out_chans, oh, ow)



def routed_output(model: nn.Module, x: Tensor, temperature: float | None) -> DynamicOutput:
    """The `DynamicOutput` of a network whose `forward_routed(x, temperature)` returns
    `(features, routing)`: logits from `model.forward_head`, `decisions["routing"]` `(B, L, K)`
    stacked over the routed layers, and the constant per-sample `model.cost`."""
    flops = model.flops(x.shape[1:])
    features, routing = model.forward_routed(x, temperature)
    decisions = {"routing": torch.stack(routing, dim=1)} if routing else {}
    return DynamicOutput(
        logits=model.forward_head(features),
        decisions=decisions,
        flops=constant_flops(flops, x.shape[0], x.device),
    )
