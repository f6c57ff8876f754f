"""ImageNet ResNets (He et al., "Deep Residual Learning for Image Recognition", 2016, Table 1).

A 7x7/2 stem conv + BN + ReLU and a 3x3/2 max-pool, four stages at widths
64/128/256/512 (times 4 for bottleneck blocks; stages 2-4 start with stride 2), global
average pooling and a linear classifier. The stride of a bottleneck sits on its 3x3
conv, not on its first 1x1 conv ("ResNet v1.5", the layout torchvision builds); where
the shape changes the shortcut is a 1x1 conv + BN (option B of the paper), elsewhere
the identity.

Module names and state-dict keys are torchvision's (`conv1`, `bn1`, `layer1.0.conv1`,
..., `layer1.0.downsample.0` / `.1`, `fc`), so `model.load_state_dict(torch.load(path))`
takes a torchvision ResNet checkpoint file the user already has (nothing is downloaded).

Figures on a 3x224x224 input, 1000 classes (FLOPs = 2 per multiply-add of convolutions
and the classifier, as `torch.utils.flop_counter.FlopCounterMode` counts; BN, ReLU and
pooling are free):

| model    | params     | FLOPs         | multiply-adds | torchvision: params, GFLOPS (`_ops`) |
|----------|------------|---------------|---------------|--------------------------------------|
| resnet18 | 11,689,512 | 3,628,146,688 | 1,814,073,344 | 11,689,512, 1.81 (1.814)             |
| resnet34 | 21,797,672 | 7,327,522,816 | 3,663,761,408 | 21,797,672, 3.66 (3.664)             |
| resnet50 | 25,557,032 | 8,178,368,512 | 4,089,184,256 | 25,557,032, 4.09 (4.089)             |

torchvision publishes the parameter counts exactly, and its "GFLOPS" column (`_ops` in
the weights' metadata, in brackets) counts multiply-adds, i.e. half of the FLOPs above:
both agree to every digit printed. `tests/models/static/test_resnet_imagenet.py`
recomputes every figure.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ...errors import ConfigError
from ...flops import conv2d_flops, conv_out_size, linear_flops
from ...outputs import DynamicOutput, constant_flops
from .._api import ClassifierApi
from .._registry import register_model
from ._checks import check_input_shape, require_positive


def _conv(in_chans: int, out_chans: int, kernel_size: int, stride: int, factory: dict) -> nn.Conv2d:
    """A bias-free conv with padding `kernel_size // 2`, He-initialised (fan-out, ReLU gain)."""
    conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, bias=False, **factory)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _convs_flops(convs: Sequence[nn.Conv2d], in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """FLOPs of `convs` applied one after another to a `(C, H, W)` input, and the output shape."""
    total, (_, height, width) = 0, in_shape
    for conv in convs:
        flops, height, width = conv2d_flops(conv, height, width)
        total += flops
    return total, (convs[-1].out_channels, height, width)


class _ResidualBlock(nn.Module):
    """What both blocks share: the shortcut, the forward, the block-level cost.

    A subclass builds `conv1, bn1, ...` and sets `residual_convs` (its branch's convs in
    order) and `last_bn` (the branch's final BN) before calling `_build_shortcut`.
    """

    expansion = 1
    downsample: nn.Sequential | None
    stride: int

    def _build_shortcut(self, in_chans: int, out_chans: int, stride: int, factory: dict) -> None:
        self.stride = stride
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_chans != out_chans:
            self.downsample = nn.Sequential(
                _conv(in_chans, out_chans, 1, stride, factory), nn.BatchNorm2d(out_chans, **factory)
            )
        else:
            self.downsample = None

    @property
    def in_chans(self) -> int:
        """Channels the block takes."""
        return self.conv1.in_channels

    @property
    def out_chans(self) -> int:
        """Channels the block returns."""
        return self.last_bn.num_features

    def residual(self, x: Tensor) -> Tensor:
        """The residual branch `F(x)`, before the sum and the final ReLU."""
        raise NotImplementedError

    def shortcut(self, x: Tensor) -> Tensor:
        """`x`, or `downsample(x)` where the block changes the shape."""
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))

    def zero_init_last(self) -> None:
        """Set the last BN's scale of the branch to 0, so the block starts as the identity
        map (plus ReLU) (Goyal et al., "Accurate, Large Minibatch SGD", 2017)."""
        nn.init.zeros_(self.last_bn.weight)

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Per-sample FLOPs on a `(C, H, W)` input and the `(C', H', W')` output shape.

        Raises:
            ConfigError: `C` is not the block's `in_chans`.
        """
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 3 or in_shape[0] != self.in_chans:
            raise ConfigError(
                f"{type(self).__name__} expects per-sample inputs (C, H, W) with C = {self.in_chans}, "
                f"got {in_shape}"
            )
        flops, out = _convs_flops(self.residual_convs, in_shape)
        if self.downsample is not None:
            flops += _convs_flops([self.downsample[0]], in_shape)[0]
        return flops, out


class ImageNetBasicBlock(_ResidualBlock):
    """Two 3x3 conv-BN layers and a shortcut: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.

    The block of ResNet-18/34, with torchvision's attribute names. The stride sits on
    `conv1`; `downsample` is `nn.Sequential(conv 1x1/stride, BN)` where the stride or the
    width changes, else None.

    Args:
        in_chans: channels in.
        planes: channels of both convs, and out (`expansion` is 1).
        stride: of `conv1` and of the shortcut.

    Shapes:
        `(B, in_chans, H, W) -> (B, planes, ceil(H / stride), ceil(W / stride))`.
    """

    expansion = 1

    def __init__(self, in_chans: int, planes: int, stride: int = 1, *, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv1 = _conv(in_chans, planes, 3, stride, factory)
        self.bn1 = nn.BatchNorm2d(planes, **factory)
        self.conv2 = _conv(planes, planes, 3, 1, factory)
        self.bn2 = nn.BatchNorm2d(planes, **factory)
        self._build_shortcut(in_chans, planes, stride, factory)

    @property
    def residual_convs(self) -> tuple[nn.Conv2d, ...]:
        """The branch's convs in order: `(conv1, conv2)`."""
        return (self.conv1, self.conv2)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The branch's final BN, `bn2`."""
        return self.bn2

    def residual(self, x: Tensor) -> Tensor:
        """`bn2(conv2(relu(bn1(conv1(x)))))`: `(B, in_chans, H, W) -> (B, planes, H', W')`."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand (each with BN) and a shortcut, ResNet v1.5.

    The block of ResNet-50 and deeper, with torchvision's attribute names: `conv1` (1x1,
    `in_chans -> planes`), `conv2` (3x3, stride `stride`, `planes -> planes`), `conv3`
    (1x1, `planes -> 4 * planes`), each followed by its BN; the stride sits on the 3x3
    conv (v1.5; the paper's v1 puts it on `conv1`). `downsample` is
    `nn.Sequential(conv 1x1/stride, BN)` where the stride or the width changes, else None.

    Args:
        in_chans: channels in.
        planes: channels of the two inner convs; the block returns `4 * planes`.
        stride: of `conv2` and of the shortcut.

    Shapes:
        `(B, in_chans, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride))`.
    """

    expansion = 4

    def __init__(self, in_chans: int, planes: int, stride: int = 1, *, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        out_chans = planes * self.expansion
        self.conv1 = _conv(in_chans, planes, 1, 1, factory)
        self.bn1 = nn.BatchNorm2d(planes, **factory)
        self.conv2 = _conv(planes, planes, 3, stride, factory)
        self.bn2 = nn.BatchNorm2d(planes, **factory)
        self.conv3 = _conv(planes, out_chans, 1, 1, factory)
        self.bn3 = nn.BatchNorm2d(out_chans, **factory)
        self._build_shortcut(in_chans, out_chans, stride, factory)

    @property
    def residual_convs(self) -> tuple[nn.Conv2d, ...]:
        """The branch's convs in order: `(conv1, conv2, conv3)`."""
        return (self.conv1, self.conv2, self.conv3)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The branch's final BN, `bn3`."""
        return self.bn3

    def residual(self, x: Tensor) -> Tensor:
        """`bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))))`:
        `(B, in_chans, H, W) -> (B, 4 * planes, H', W')`."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


STAGE_WIDTHS = (64, 128, 256, 512)
"""`planes` of the four stages; a stage returns `planes * block.expansion` channels."""


class ImageNetResNet(ClassifierApi, nn.Module):
    """ImageNet-layout ResNet with torchvision's module names (see the module docstring).

    Args:
        block: `ImageNetBasicBlock` (ResNet-18/34) or `Bottleneck` (ResNet-50 and deeper),
            or a subclass of either.
        blocks_per_stage: four counts, e.g. `(2, 2, 2, 2)` for ResNet-18, `(3, 4, 6, 3)`
            for ResNet-34/50.
        num_classes: classifier outputs.
        in_chans: input channels.
        zero_init_residual: start every block's last BN scale at 0 (`zero_init_last`).

    Attributes:
        conv1, bn1, relu, maxpool: the stem, `(B, in_chans, H, W) -> (B, 64, H/4, W/4)`
            (each division rounded up).
        layer1, layer2, layer3, layer4: the stages, `nn.Sequential`s of blocks, each
            block separately callable; `stages` gives the four as a tuple.
        fc: the classifier `nn.Linear(512 * block.expansion, num_classes)`.
        default_input_shape: `(in_chans, 224, 224)`.
        num_features: `512 * block.expansion` (classifier API:
            `dynamicnets.models.ClassifierApi`).

    The head is `forward_head` (global average pool, then `fc`) rather than a `head`
    module, so that the state-dict keys stay torchvision's. Any `H, W >= 1` works; no op
    depends on the memory layout, so `model.to(memory_format=torch.channels_last)` is
    supported.

    Returns (forward):
        `DynamicOutput` with `logits (B, num_classes)` and `flops (B,)`, the constant
        per-sample `flops(x.shape[1:])`.

    Raises:
        ConfigError: a bad `block`, `blocks_per_stage`, `num_classes` or `in_chans`
            (constructor), or an input whose per-sample shape is not `(in_chans, H, W)`
            (forward).
    """

    head_path = "fc"
    classifier_paths = ("fc",)

    def __init__(
        self,
        block: type[ImageNetBasicBlock] | type[Bottleneck],
        blocks_per_stage: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        zero_init_residual: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not (isinstance(block, type) and issubclass(block, (ImageNetBasicBlock, Bottleneck))):
            raise ConfigError(
                f"ImageNetResNet: block must be ImageNetBasicBlock or Bottleneck, got {block!r}"
            )
        counts = tuple(blocks_per_stage)
        depth = (2 if issubclass(block, ImageNetBasicBlock) else 3) * sum(
            c for c in counts if isinstance(c, int)) + 2
        name = f"resnet{depth}"
        if len(counts) != 4:
            raise ConfigError(f"model {name!r}: blocks_per_stage needs 4 counts, got {counts}")
        require_positive(name, num_classes=num_classes, in_chans=in_chans,
                         **{f"blocks_per_stage[{i}]": c for i, c in enumerate(counts)})
        factory = {"device": device, "dtype": dtype}
        self.name = name
        self.in_chans = in_chans
        self.default_input_shape = (in_chans, 224, 224)
        self.conv1 = _conv(in_chans, STAGE_WIDTHS[0], 7, 2, factory)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0], **factory)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        chans = STAGE_WIDTHS[0]
        for index, (planes, count) in enumerate(zip(STAGE_WIDTHS, counts)):
            blocks = []
            for b in range(count):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(block(chans, planes, stride, **factory))
                chans = planes * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(chans, num_classes, **factory)
        if zero_init_residual:
            for stage in self.stages:
                for blk in stage:
                    blk.zero_init_last()

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        """`(layer1, layer2, layer3, layer4)`."""
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward_stem(self, x: Tensor) -> Tensor:
        """`maxpool(relu(bn1(conv1(x))))`: `(B, in_chans, H, W) -> (B, 64, ceil(H/4), ceil(W/4))`."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_features(self, x: Tensor) -> Tensor:
        """`(B, in_chans, H, W) -> (B, num_features, ceil(H/32), ceil(W/32))`."""
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, features: Tensor) -> Tensor:
        """Global average pool, then `fc`: `(B, num_features, H, W) -> (B, num_classes)`."""
        return self.fc(features.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> DynamicOutput:
        flops = self.flops(x.shape[1:])
        logits = self.forward_head(self.forward_features(x))
        return DynamicOutput(logits=logits, flops=constant_flops(flops, x.shape[0], x.device))

    def cost_breakdown(self, input_shape: tuple[int, ...]) -> dict:
        """Per-sample FLOPs of each part on a `(in_chans, H, W)` input.

        Returns:
            `{"stem": int, "stages": [[int per block] per stage], "head": int}`.

        Raises:
            ConfigError: `input_shape` is not `(in_chans, H, W)` with `H, W >= 1`.
        """
        shape = check_input_shape(self.name, input_shape, self.in_chans, spatial_dims=2)
        stem, shape = _convs_flops([self.conv1], shape)
        pool = self.maxpool
        shape = (shape[0],) + tuple(
            conv_out_size(s, pool.kernel_size, pool.stride, pool.padding) for s in shape[1:]
        )
        stages = []
        for stage in self.stages:
            costs = []
            for blk in stage:
                flops, shape = blk.flops_and_shape(shape)
                costs.append(flops)
            stages.append(costs)
        return {"stem": stem, "stages": stages, "head": linear_flops(self.fc)}

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs on a `(in_chans, H, W)` input (as `FlopCounterMode` counts)."""
        parts = self.cost_breakdown(input_shape)
        return parts["stem"] + sum(sum(s) for s in parts["stages"]) + parts["head"]

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """The cost protocol, analytically: per-sample FLOPs on a `(in_chans, H, W)` input
        and the per-sample logits shape `(num_classes,)`."""
        return self.flops(in_shape), (self.fc.out_features,)


def _imagenet_resnet(block, counts, num_classes, in_chans, device, dtype) -> ImageNetResNet:
    return ImageNetResNet(block, counts, num_classes, in_chans, device=device, dtype=dtype)


@register_model
def resnet18(*, num_classes: int = 1000, in_chans: int = 3, device=None, dtype=None) -> ImageNetResNet:
    """ResNet-18 for ImageNet (basic blocks 2-2-2-2). 3x224x224: 11,689,512 params, 3,628,146,688 FLOPs."""
    return _imagenet_resnet(ImageNetBasicBlock, (2, 2, 2, 2), num_classes, in_chans, device, dtype)


@register_model
def resnet34(*, num_classes: int = 1000, in_chans: int = 3, device=None, dtype=None) -> ImageNetResNet:
    """ResNet-34 for ImageNet (basic blocks 3-4-6-3). 3x224x224: 21,797,672 params, 7,327,522,816 FLOPs."""
    return _imagenet_resnet(ImageNetBasicBlock, (3, 4, 6, 3), num_classes, in_chans, device, dtype)


@register_model
def resnet50(*, num_classes: int = 1000, in_chans: int = 3, device=None, dtype=None) -> ImageNetResNet:
    """ResNet-50 v1.5 for ImageNet (bottlenecks 3-4-6-3).

    3x224x224: 25,557,032 params, 8,178,368,512 FLOPs.
    """
    return _imagenet_resnet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, device, dtype)
