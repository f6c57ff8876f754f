"""Building blocks of RANet (Yang et al., "Resolution Adaptive Networks for Efficient
Inference", CVPR 2020), written from the paper's description.

RANet runs one dense sub-network per input resolution, the coarsest first. A block of a
later (finer) sub-network *fuses* the block at the same position of the sub-network
before it: each of its layers adds features computed from the matching layer of that
block (conv at the low resolution, then bilinear up-sampling), and the block ends by
concatenating a 1x1 conv of the low block's last features. Some fusion blocks halve the
resolution in their last layer, so that every sub-network reaches the coarsest
resolution, where its own (non-fusion) blocks and their exits run.

What a later sub-network reads of a block is the list of its layer outputs
`[in, out_1, ..., out_n]`. Within one resolution every layer output begins with its input
(dense concatenation), so that list is carried as *taps*: `[out_n]`, or
`[out_{n-1}, out_n]` when the last layer changed the resolution, and the earlier outputs
are channel prefixes (views) of the first tap.

Up- and down-sampling is bilinear (`layers.resize.resize`, `align_corners=False`, no
antialiasing: exactly a 2x2 mean when a side halves). Like pooling it costs no FLOPs in the
library's convention.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...layers.resize import resize
from ..static.conv_norm_act import ConvNormAct
from .msdnet_layers import BottleneckConv, MSDFirstLayer

Shape = tuple[int, ...]


def _inner(bottleneck_factor: int, in_chans: int, out_chans: int) -> int:
    return min(in_chans, bottleneck_factor * out_chans)


class RAFirstLayer(nn.Module):
    """The initial layer: base features for every sub-network, built from the finest down.

    Args:
        in_chans: image channels.
        channels: input channels of each sub-network, coarsest sub-network first.
        levels: resolution level of each sub-network (`1` = coarsest), non-decreasing
            by steps of 0 or 1; a step of 1 is a stride-2 conv, a step of 0 a stride-1 conv.
        stem: `"cifar"` or `"imagenet"`, the first conv as in `MSDFirstLayer`.

    Shapes:
        `(B, in_chans, H, W) -> [(B, channels[s], H_s, W_s) for each sub-network s]`,
        coarsest first; the last (finest) at `H` (cifar) or `H/4` (imagenet).
    """

    def __init__(self, in_chans: int, channels: Sequence[int], levels: Sequence[int], stem: str = "cifar",
                 *, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.stem = MSDFirstLayer(in_chans, [channels[-1]], stem, **factory)
        # finest to coarsest: convs[i] makes the features of sub-network S-2-i
        self.convs = nn.ModuleList(
            ConvNormAct(channels[s + 1], channels[s], 3, 1 + levels[s + 1] - levels[s], **factory)
            for s in reversed(range(len(channels) - 1))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.stem(x)
        for conv in self.convs:
            features.append(conv(features[-1]))
        return features[::-1]

    def flops_and_shape(self, in_shape: Shape) -> tuple[int, list[Shape]]:
        total, shapes = self.stem.flops_and_shape(in_shape)
        for conv in self.convs:
            flops, shape = conv.flops_and_shape(shapes[-1])
            total += flops
            shapes.append(shape)
        return total, shapes[::-1]


class DenseLayer(nn.Module):
    """`cat[x, BottleneckConv(x)]`: `growth` new channels at the same resolution.

    Shapes:
        `(B, in_chans, H, W) -> (B, in_chans + growth, H, W)`.
    """

    def __init__(self, in_chans: int, growth: int, bottleneck_factor: int, *, device=None, dtype=None):
        super().__init__()
        self.conv = BottleneckConv(in_chans, growth, 1, _inner(bottleneck_factor, in_chans, growth),
                                   device=device, dtype=dtype)

    def forward(self, x: Tensor, low: Tensor | None = None) -> Tensor:
        return torch.cat([x, self.conv(x)], dim=1)

    def flops_and_shape(self, in_shape: Shape, low_shape: Shape | None = None) -> tuple[int, Shape]:
        flops, shape = self.conv.flops_and_shape(in_shape)
        return flops, (in_shape[0] + shape[0],) + shape[1:]


class FusionLayer(nn.Module):
    """A dense layer that also reads the matching layer of the lower-resolution sub-network.

    `out = cat[resize(x), resize(up(low)), same(x)]`: `same` (a `BottleneckConv`, stride 2
    when `down`) makes `growth - floor(growth * fusion_ratio)` channels and fixes the output
    size; `up` (a stride-1 `BottleneckConv` at the low resolution) makes
    `floor(growth * fusion_ratio)`, up-sampled to that size; `x` itself is resized only
    when `down` (a 2x2 mean).

    Args:
        in_chans, low_chans: channels of `x` and of the low-resolution features.
        growth: new channels.
        fusion_ratio: share of them computed from the low-resolution features.
        bottleneck_factors: `(own, low)` bottleneck factors of `same` and `up`.
        down: halve the resolution.

    Shapes:
        `(B, in_chans, H, W), (B, low_chans, h, w) -> (B, in_chans + growth, H', W')`,
        `H' = ceil(H / 2)` when `down`, else `H`.
    """

    def __init__(self, in_chans: int, low_chans: int, growth: int, fusion_ratio: float,
                 bottleneck_factors: tuple[int, int], down: bool, *, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        from_low = math.floor(growth * fusion_ratio)
        own = growth - from_low
        self.same = BottleneckConv(in_chans, own, 2 if down else 1, _inner(bottleneck_factors[0], in_chans, own),
                                   **factory)
        self.up = BottleneckConv(low_chans, from_low, 1, _inner(bottleneck_factors[1], low_chans, from_low),
                                 **factory)

    def forward(self, x: Tensor, low: Tensor) -> Tensor:
        new = self.same(x)
        size = new.shape[-2:]
        return torch.cat([resize(x, size, antialias=False), resize(self.up(low), size, antialias=False), new], dim=1)

    def flops_and_shape(self, in_shape: Shape, low_shape: Shape) -> tuple[int, Shape]:
        flops_same, same = self.same.flops_and_shape(in_shape)
        flops_up, up = self.up.flops_and_shape(low_shape)
        return flops_same + flops_up, (in_shape[0] + up[0] + same[0],) + same[1:]


class RABlock(nn.Module):
    """`n` dense layers, then (fusion blocks) the low block's last features, then a transition.

    A plain block is `n` `DenseLayer`s. A fusion block is `n` `FusionLayer`s, layer `i`
    reading output `i - 1` of the matching block of the previous sub-network (its input for
    `i = 1`), then `cat[x, resize(conv1x1(low_n))]` with `floor(C * fusion_ratio)` channels
    from the low block's last output `low_n`. An optional 1x1 transition compresses the
    result.

    Args:
        in_chans: input channels.
        growth: new channels per layer.
        num_layers: `n`.
        bottleneck_factor: of this sub-network.
        compression: a 1x1 transition to `max(1, floor(compression * C))` channels ends
            the block; `None` for none.
        low_channels: fusion blocks only: the matching low block's
            `[in, out_1, ..., out_n]` channels (`n + 1` ints).
        low_bottleneck_factor, fusion_ratio: fusion blocks only.
        down: fusion blocks only: the last layer halves the resolution.

    Attributes:
        channels: `[in, out_1, ..., out_n]` channels (what a later fusion block reads).
        out_chans: channels of the block's output.
        num_taps: tensors in the taps it returns (2 when `down`, else 1).

    Shapes:
        `forward(x, low_taps)`: `(B, in_chans, H, W)` and, for a fusion block, the low
        block's taps -> `((B, out_chans, H', W'), taps)`.
    """

    def __init__(
        self,
        in_chans: int,
        growth: int,
        num_layers: int,
        bottleneck_factor: int,
        compression: float | None = None,
        *,
        low_channels: Sequence[int] | None = None,
        low_bottleneck_factor: int = 1,
        fusion_ratio: float = 0.25,
        down: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.fuses = low_channels is not None
        self.low_channels = None if low_channels is None else tuple(int(c) for c in low_channels)
        self.channels = [in_chans + i * growth for i in range(num_layers + 1)]
        self.num_taps = 2 if down else 1
        if self.fuses:
            self.layers = nn.ModuleList(
                FusionLayer(self.channels[i], self.low_channels[i], growth, fusion_ratio,
                            (bottleneck_factor, low_bottleneck_factor), down and i == num_layers - 1, **factory)
                for i in range(num_layers)
            )
            last = self.channels[-1]
            self.last = ConvNormAct(self.low_channels[-1], math.floor(last * fusion_ratio), 1, 1, **factory)
            chans = last + self.last.conv.out_channels
        else:
            self.layers = nn.ModuleList(DenseLayer(c, growth, bottleneck_factor, **factory) for c in self.channels[:-1])
            self.last = None
            chans = self.channels[-1]
        self.transition = None
        if compression is not None:
            self.transition = ConvNormAct(chans, max(1, math.floor(compression * chans)), 1, 1, **factory)
        self.out_chans = chans if self.transition is None else self.transition.conv.out_channels

    def _low(self, taps: Sequence) -> list:
        """The low block's `[in, out_1, ..., out_n]` from its taps (channel-prefix views)."""
        return [taps[0][:, :c] for c in self.low_channels[:-1]] + [taps[-1]]

    def forward(self, x: Tensor, low_taps: Sequence[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        low = self._low(low_taps) if self.fuses else [None] * len(self.layers)
        outputs = [x]
        for layer, low_i in zip(self.layers, low):
            outputs.append(layer(outputs[-1], low_i))
        taps = outputs[-self.num_taps:]
        x = outputs[-1]
        if self.fuses:
            x = torch.cat([x, resize(self.last(low[-1]), x.shape[-2:], antialias=False)], dim=1)
        if self.transition is not None:
            x = self.transition(x)
        return x, taps

    def flops_and_shape(self, in_shape: Shape, low_taps: Sequence[Shape] | None = None
                        ) -> tuple[int, tuple[Shape, list[Shape]]]:
        """Per-sample FLOPs and `(output shape, tap shapes)` (same arguments as `forward`, as shapes)."""
        if self.fuses:
            low = [(c,) + tuple(low_taps[0][1:]) for c in self.low_channels[:-1]] + [tuple(low_taps[-1])]
        else:
            low = [None] * len(self.layers)
        total, shapes = 0, [tuple(in_shape)]
        for layer, low_i in zip(self.layers, low):
            flops, shape = layer.flops_and_shape(shapes[-1], low_i)
            total += flops
            shapes.append(shape)
        taps = shapes[-self.num_taps:]
        shape = shapes[-1]
        if self.fuses:
            flops, extra = self.last.flops_and_shape(low[-1])
            total += flops
            shape = (shape[0] + extra[0],) + shape[1:]
        if self.transition is not None:
            flops, shape = self.transition.flops_and_shape(shape)
            total += flops
        return total, (shape, taps)
