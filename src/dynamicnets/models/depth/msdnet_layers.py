"""Building blocks of MSDNet (Huang et al., "Multi-Scale Dense Networks for Resource
Efficient Image Classification", ICLR 2018), written from the paper's description.

The state between layers is a list of feature maps, one per *active* scale, finest
first; scale `s` has `1/2**s` of the resolution of scale 0. Later layers may drop the
finest scales (they only serve deeper layers at coarser scales), so each layer knows
the index of the first scale it reads (`in_first`) and writes (`out_first`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..static.conv_norm_act import ConvNormAct
from ...flops import flops_and_shape


class BottleneckConv(nn.Module):
    """Optional 1x1 conv-BN-ReLU to `inner` channels, then 3x3 conv-BN-ReLU (stride 1 or 2).

    Args:
        in_chans, out_chans: channels in and out.
        stride: of the 3x3 conv (2 for the "strided" path from a finer scale).
        inner: bottleneck width; `None` skips the 1x1 conv.

    Shapes:
        `(B, in_chans, H, W) -> (B, out_chans, ceil(H/stride), ceil(W/stride))`.
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int, inner: int | None, *, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        layers = []
        if inner is not None:
            layers.append(ConvNormAct(in_chans, inner, 1, 1, **factory))
            in_chans = inner
        layers.append(ConvNormAct(in_chans, out_chans, 3, stride, **factory))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        return flops_and_shape(self.layers, in_shape)


class MSDFirstLayer(nn.Module):
    """The input layer: the image at scale 0, then one strided conv per coarser scale.

    Args:
        in_chans: image channels.
        channels: output channels per scale (`num_scales` ints).
        stem: `"cifar"` (3x3 conv, stride 1) or `"imagenet"` (7x7 conv stride 2 and a
            3x3 max-pool stride 2, as for 224x224 inputs) at scale 0.

    Shapes:
        `(B, in_chans, H, W) -> [(B, channels[s], H_s, W_s) for each scale s]`,
        `H_s = ceil(H_0 / 2**s)`, `H_0 = H` (cifar) or `ceil(ceil(H/2)/2)` (imagenet).
    """

    def __init__(self, in_chans: int, channels: Sequence[int], stem: str = "cifar", *, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if stem == "cifar":
            first: nn.Module = ConvNormAct(in_chans, channels[0], 3, 1, **factory)
        else:
            first = nn.Sequential(
                ConvNormAct(in_chans, channels[0], 7, 2, **factory), nn.MaxPool2d(3, stride=2, padding=1)
            )
        self.scales = nn.ModuleList([first])
        for s in range(1, len(channels)):
            self.scales.append(ConvNormAct(channels[s - 1], channels[s], 3, 2, **factory))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for layer in self.scales:
            x = layer(x)
            features.append(x)
        return features

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, list[tuple[int, ...]]]:
        total, shapes, shape = 0, [], in_shape
        for layer in self.scales:
            flops, shape = flops_and_shape(layer, shape)
            total += flops
            shapes.append(shape)
        return total, shapes


class MSDLayer(nn.Module):
    """One dense layer over scales: every output scale concatenates its input with new features.

    For output scale `s` (`out_first <= s < num_scales`):
    `x_s' = cat[x_s, strided(x_{s-1}), regular(x_s)]`, where `regular` is a
    `BottleneckConv` at stride 1 and `strided` one at stride 2 reading the next finer
    scale; `strided` exists only when that finer scale is among the inputs. The two
    paths share the scale's growth `growth[s]` (strided gets `growth[s] // 2`); without
    the strided path the regular one makes all of it.

    Args:
        in_channels: channels of the input scales `in_first .. num_scales-1`.
        in_first, out_first: first scale read / written (`out_first >= in_first`).
        growth: new channels per scale (`num_scales` ints).
        bottleneck_factors: per scale, the bottleneck width is
            `min(in_chans, factor * out_chans)` of the scale read; `None`: no bottleneck.

    Shapes:
        list of `(B, in_channels[i], H_s, W_s)` -> list of `(B, out_channels[i], H_s, W_s)`
        for the output scales.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_first: int,
        out_first: int,
        growth: Sequence[int],
        bottleneck_factors: Sequence[int] | None,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        num_scales = len(growth)
        self.in_first, self.out_first = in_first, out_first
        self.regular = nn.ModuleList()
        self.strided = nn.ModuleDict()
        self.out_channels = []

        def inner(scale: int, cin: int, cout: int) -> int | None:
            return None if bottleneck_factors is None else min(cin, bottleneck_factors[scale] * cout)

        for s in range(out_first, num_scales):
            cin = in_channels[s - in_first]
            has_strided = s - 1 >= in_first
            from_finer = growth[s] // 2 if has_strided else 0
            if has_strided:
                cfin = in_channels[s - 1 - in_first]
                self.strided[str(s)] = BottleneckConv(cfin, from_finer, 2, inner(s - 1, cfin, from_finer), **factory)
            same = growth[s] - from_finer
            self.regular.append(BottleneckConv(cin, same, 1, inner(s, cin, same), **factory))
            self.out_channels.append(cin + growth[s])

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        out = []
        for j, regular in enumerate(self.regular):
            s = self.out_first + j
            i = s - self.in_first
            parts = [features[i]]
            if str(s) in self.strided:
                parts.append(self.strided[str(s)](features[i - 1]))
            parts.append(regular(features[i]))
            out.append(torch.cat(parts, dim=1))
        return out

    def flops_and_shape(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, list[tuple[int, ...]]]:
        total, shapes = 0, []
        for j, regular in enumerate(self.regular):
            s = self.out_first + j
            i = s - self.in_first
            flops, shape = flops_and_shape(regular, in_shapes[i])
            total += flops
            if str(s) in self.strided:
                total += flops_and_shape(self.strided[str(s)], in_shapes[i - 1])[0]
            shapes.append((self.out_channels[j],) + shape[1:])
        return total, shapes


class MSDTransition(nn.Module):
    """1x1 conv-BN-ReLU per scale that compresses the concatenated channels (DenseNet style).

    Shapes:
        list of `(B, in_channels[i], H_i, W_i)` -> list of `(B, out_channels[i], H_i, W_i)`.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], *, device=None, dtype=None):
        super().__init__()
        self.convs = nn.ModuleList(
            ConvNormAct(cin, cout, 1, 1, device=device, dtype=dtype) for cin, cout in zip(in_channels, out_channels)
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [conv(f) for conv, f in zip(self.convs, features)]

    def flops_and_shape(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, list[tuple[int, ...]]]:
        total, shapes = 0, []
        for conv, shape in zip(self.convs, in_shapes):
            flops, out = conv.flops_and_shape(shape)
            total += flops
            shapes.append(out)
        return total, shapes
