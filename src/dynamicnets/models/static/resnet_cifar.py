"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", 2016, sec. 4.2).

The 6n+2 family: a 3x3 stem conv, three stages of `n` basic blocks at widths
`width, 2*width, 4*width` (16/32/64 by default; stages 2 and 3 start with stride 2),
global average pooling and a linear classifier. Depth 20/32/56/110 is n = 3/5/9/18.

Shortcut: option B of the paper, a 1x1 conv (stride 2) + BatchNorm where the shape
changes, identity elsewhere. The paper's CIFAR numbers use option A (strided identity
with zero-padded channels, no parameters); B adds exactly two projections, i.e.
`2*width**2 + 8*width**2` weights + `12*width` BN parameters (2,752 at width 16) and
524,288 FLOPs on 3x32x32. B is kept because every block is then an ordinary
`conv/BN` module whose cost `FlopCounterMode` sees, and it needs no channel padding.

Figures on a 3x32x32 input, 10 classes, width 16 (FLOPs = 2 per multiply-add):

| model     | params    | FLOPs         | option A params / FLOPs         |
|-----------|-----------|---------------|---------------------------------|
| resnet20  |   272,474 |    81,626,368 |   269,722 (0.27M) /  81,102,080 |
| resnet32  |   466,906 |   138,249,472 |   464,154 (0.46M) / 137,725,184 |
| resnet56  |   855,770 |   251,495,680 |   853,018 (0.85M) / 250,971,392 |
| resnet110 | 1,730,714 |   506,299,648 | 1,727,962 (1.7M)  / 505,775,360 |

Option A parameter counts round to the paper's (Table 6: 0.27M/0.46M/0.85M/1.7M); option A
FLOPs are 2x the multiply-adds Li et al. ("Pruning Filters for Efficient ConvNets", 2017)
publish for ResNet-56/110 (1.25e8 / 2.53e8). `tests/models/static/test_resnet_cifar.py`
recomputes every figure.
"""
from __future__ import annotations

from torch import Tensor, nn

from ...errors import ConfigError
from ...outputs import DynamicOutput, constant_flops
from .._api import ClassifierApi
from .._registry import register_model
from ._checks import check_input_shape, require_positive
from .classifier_head import ClassifierHead
from .conv_norm_act import ConvNormAct


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut: `relu(conv2(conv1(x)) + shortcut(x))`.

    `shortcut` is a 1x1 conv + BN (option B) when `stride != 1` or the width changes,
    else identity.

    Shapes:
        `(B, in_chans, H, W) -> (B, out_chans, ceil(H / stride), ceil(W / stride))`.
    """

    def __init__(
        self, in_chans: int, out_chans: int, stride: int = 1, *, device=None, dtype=None
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv1 = ConvNormAct(in_chans, out_chans, 3, stride, act=True, **factory)
        self.conv2 = ConvNormAct(out_chans, out_chans, 3, 1, act=False, **factory)
        if stride != 1 or in_chans != out_chans:
            self.shortcut: nn.Module = ConvNormAct(
                in_chans, out_chans, 1, stride, act=False, **factory
            )
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Per-sample FLOPs on a `(C, H, W)` input and the `(C', H', W')` output shape."""
        flops1, mid = self.conv1.flops_and_shape(in_shape)
        flops2, out = self.conv2.flops_and_shape(mid)
        flops = flops1 + flops2
        if isinstance(self.shortcut, ConvNormAct):
            flops += self.shortcut.flops_and_shape(in_shape)[0]
        return flops, out


class CifarResNet(ClassifierApi, nn.Module):
    """CIFAR-style ResNet of depth `6n + 2` with option-B shortcuts (see module docstring).

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: classifier outputs.
        in_chans: input channels (3 for CIFAR, 1 for MNIST).
        width: channels of the first stage; the stages are `width, 2*width, 4*width`.

    Attributes:
        stem: `(B, in_chans, H, W) -> (B, width, H, W)`.
        stages: `nn.ModuleList` of 3 stages, each an `nn.ModuleList` of `BasicBlock`s,
            each block separately callable (for exits or gates attached per block).
        head: `ClassifierHead`, `(B, 4*width, H/4, W/4) -> (B, num_classes)`.
        default_input_shape: `(in_chans, 32, 32)`, the canonical per-sample input.
        num_features: `4*width`, the channels of `forward_features`' output (the
            classifier API of `dynamicnets.models.ClassifierApi`).

    Any `H, W >= 1` works (28x28 MNIST, 32x32 CIFAR, ...); no op depends on the memory
    layout, so `model.to(memory_format=torch.channels_last)` is supported.

    Returns (forward):
        `DynamicOutput` with `logits (B, num_classes)` and `flops (B,)`, the constant
        per-sample `flops(x.shape[1:])`.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        name = f"resnet{depth}"
        require_positive(name, depth=depth, num_classes=num_classes, in_chans=in_chans, width=width)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(
                f"model {name!r}: depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}"
            )
        blocks_per_stage = (depth - 2) // 6
        factory = {"device": device, "dtype": dtype}
        self.name = name
        self.in_chans = in_chans
        self.default_input_shape = (in_chans, 32, 32)
        self.stem = ConvNormAct(in_chans, width, 3, 1, act=True, **factory)
        self.stages = nn.ModuleList()
        chans = width
        for stage_index, stage_width in enumerate((width, 2 * width, 4 * width)):
            blocks = nn.ModuleList()
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(chans, stage_width, stride, **factory))
                chans = stage_width
            self.stages.append(blocks)
        self.head = ClassifierHead(chans, num_classes, **factory)

    def forward_features(self, x: Tensor) -> Tensor:
        """`(B, in_chans, H, W) -> (B, 4*width, ceil(H/4), ceil(W/4))`."""
        x = self.stem(x)
        for blocks in self.stages:
            for block in blocks:
                x = block(x)
        return x

    def forward(self, x: Tensor) -> DynamicOutput:
        flops = self.flops(x.shape[1:])
        logits = self.forward_head(self.forward_features(x))
        return DynamicOutput(logits=logits, flops=constant_flops(flops, x.shape[0], x.device))

    def cost_breakdown(self, input_shape: tuple[int, ...]) -> dict:
        """Per-sample FLOPs of each part on a `(in_chans, H, W)` input.

        Returns:
            `{"stem": int, "stages": [[int per block] per stage], "head": int}`.
        """
        shape = check_input_shape(self.name, input_shape, self.in_chans, spatial_dims=2)
        stem, shape = self.stem.flops_and_shape(shape)
        stages = []
        for blocks in self.stages:
            costs = []
            for block in blocks:
                flops, shape = block.flops_and_shape(shape)
                costs.append(flops)
            stages.append(costs)
        return {"stem": stem, "stages": stages, "head": self.head.flops()}

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs on a `(in_chans, H, W)` input (as `FlopCounterMode` counts)."""
        parts = self.cost_breakdown(input_shape)
        return parts["stem"] + sum(sum(s) for s in parts["stages"]) + parts["head"]


def _cifar_resnet(
    depth: int, num_classes: int, in_chans: int, width: int, device, dtype
) -> CifarResNet:
    return CifarResNet(depth, num_classes, in_chans, width, device=device, dtype=dtype)


@register_model
def resnet20(
    *, num_classes: int = 10, in_chans: int = 3, width: int = 16, device=None, dtype=None
) -> CifarResNet:
    """ResNet-20 (n = 3). 3x32x32: 272,474 params, 81,626,368 FLOPs."""
    return _cifar_resnet(20, num_classes, in_chans, width, device, dtype)


@register_model
def resnet32(
    *, num_classes: int = 10, in_chans: int = 3, width: int = 16, device=None, dtype=None
) -> CifarResNet:
    """ResNet-32 (n = 5). 3x32x32: 466,906 params, 138,249,472 FLOPs."""
    return _cifar_resnet(32, num_classes, in_chans, width, device, dtype)


@register_model
def resnet56(
    *, num_classes: int = 10, in_chans: int = 3, width: int = 16, device=None, dtype=None
) -> CifarResNet:
    """ResNet-56 (n = 9). 3x32x32: 855,770 params, 251,495,680 FLOPs."""
    return _cifar_resnet(56, num_classes, in_chans, width, device, dtype)


@register_model
def resnet110(
    *, num_classes: int = 10, in_chans: int = 3, width: int = 16, device=None, dtype=None
) -> CifarResNet:
    """ResNet-110 (n = 18). 3x32x32: 1,730,714 params, 506,299,648 FLOPs."""
    return _cifar_resnet(110, num_classes, in_chans, width, device, dtype)
