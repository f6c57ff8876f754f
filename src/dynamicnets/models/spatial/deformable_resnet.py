"""Deformable CIFAR ResNets: dynamic receptive fields (Dai et al. 2017; Zhu et al. 2019).

The layout is `dynamicnets.models.static.CifarResNet` (6n+2 layers, widths `w, 2w, 4w`,
option-B projection shortcuts). In the blocks of the chosen stages (by default the last
one, as Deformable ConvNets v2 put their deformable layers in the last stages) the second
3x3 conv is a deformable conv: a small 3x3 conv on that conv's input predicts, for every
output position, a `(dy, dx)` offset per kernel tap and (modulated, v2) a modulation
scalar per tap, so each position samples the input where the data suggest, not on the
fixed 3x3 grid.

The offset conv starts at zero: every offset is 0 and every modulation scalar 1
(modulation is `2 * sigmoid(logit)`, in (0, 2), 1 at a zero logit), so at initialisation
the network computes exactly the plain ResNet. Plain weights therefore load as they are:
`model.load_state_dict(resnet.state_dict(), strict=False)` leaves only the offset convs
missing and reproduces the plain network's outputs, a starting point to fine-tune from.

Cost: the deformable conv's column product costs what the plain conv costs; the offset
conv (`in * 27 * 9` multiply-adds per position for v2, `in * 18 * 9` for v1) is the
extra. Bilinear sampling is elementwise arithmetic that `FlopCounterMode` does not
count, so `flops` does not either. Every sample costs the same.

Figures on 3x32x32, 10 classes, width 16, default settings (last stage, modulated);
`tests/models/spatial/test_deformable_resnet.py` checks them:

| model               | params  | FLOPs       | v1 (`modulated=False`) | plain ResNet          |
|---------------------|---------|-------------|------------------------|-----------------------|
| deformable_resnet20 | 319,211 |  87,598,336 | 303,632 /  85,607,680  | 272,474 /  81,626,368 |
| deformable_resnet32 | 544,801 | 148,202,752 | 518,836 / 144,884,992  | 466,906 / 138,249,472 |

The offset convs add 17% parameters and 7% FLOPs to ResNet-20 (v2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...layers.deform_conv import DeformConv2d
from ...outputs import DynamicOutput, constant_flops
from .._registry import register_model
from ..static._checks import require_positive
from ..static.resnet_cifar import BasicBlock, CifarResNet

NUM_STAGES = 3


class DeformConvNorm(nn.Module):
    """3x3 deformable conv (its own zero-initialised offset conv) + BatchNorm, no activation.

    The parameter names match `ConvNormAct`'s (`conv.weight`, `bn.*`), so the weights of
    a plain conv-BN load into it unchanged; `conv.offset_conv.*` are the new ones.

    Args:
        in_chans, out_chans: channels in and out.
        modulated: v2 (offsets and modulation scalars) if True, v1 (offsets only) otherwise.

    Attributes:
        conv: `DeformConv2d(in_chans, out_chans, 3, padding 1, no bias)`.
        bn: `BatchNorm2d(out_chans)`.

    Shapes:
        `(B, in_chans, H, W) -> (B, out_chans, H, W)`; `forward_with_offset` also returns
        the offsets `(B, 18, H, W)`.
    """

    def __init__(
        self, in_chans: int, out_chans: int, *, modulated: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv = DeformConv2d(in_chans, out_chans, 3, bias=False, modulated=modulated, **factory)
        self.bn = nn.BatchNorm2d(out_chans, **factory)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward_with_offset(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(B, C_in, H, W) -> (out (B, C_out, H, W), offset (B, 18, H, W))`.

        Offsets are `(dy, dx)` per tap in input pixels (the layout of `DeformConv2d`);
        modulation, when on, is `2 * sigmoid` of the predicted logits (1 at a zero logit).
        """
        offset, mask = self.conv.predict(x)
        if mask is not None:
            mask = 2.0 * mask
        return self.bn(self.conv(x, offset, mask)), offset

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C_in, H, W) -> (B, C_out, H, W)`."""
        return self.forward_with_offset(x)[0]

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Per-sample FLOPs (offset conv + column product) on a `(C, H, W)` input, and the
        `(C', H, W)` output shape."""
        if len(in_shape) != 3 or in_shape[0] != self.conv.in_channels:
            raise ConfigError(
                f"DeformConvNorm expects a per-sample shape ({self.conv.in_channels}, H, W), "
                f"got {tuple(in_shape)}"
            )
        _, height, width = in_shape
        return self.conv.flops(height, width), (self.conv.out_channels, height, width)


class DeformableBasicBlock(BasicBlock):
    """A `BasicBlock` whose second 3x3 conv is deformable (`DeformConvNorm`).

    `relu(deform_conv2(conv1(x)) + shortcut(x))`; the offsets come from the input of
    `conv2` (the output of `conv1`), as in Deformable ConvNets. Parameter names are those
    of `BasicBlock` plus `conv2.conv.offset_conv.*`.

    Args:
        in_chans, out_chans, stride: as `BasicBlock`.
        modulated: v2 (learned modulation) if True, v1 otherwise.

    Shapes:
        `(B, in_chans, H, W) -> (B, out_chans, ceil(H / stride), ceil(W / stride))`.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        stride: int = 1,
        *,
        modulated: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_chans, out_chans, stride, device=device, dtype=dtype)
        self.conv2 = DeformConvNorm(out_chans, out_chans, modulated=modulated, device=device, dtype=dtype)

    def forward_with_offset(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The block's output and the offsets its deformable conv used.

        Returns:
            `(out (B, out_chans, H', W'), offset (B, 18, H', W'))`.
        """
        branch, offset = self.conv2.forward_with_offset(self.conv1(x))
        return self.act(branch + self.shortcut(x)), offset


def _check_stages(model: str, stages) -> tuple[int, ...]:
    """`deformable_stages` as a sorted tuple of distinct stage indices in `0..2`."""
    if isinstance(stages, int) and not isinstance(stages, bool):
        stages = (stages,)
    valid = isinstance(stages, Sequence) and not isinstance(stages, str) and all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s < NUM_STAGES for s in stages
    )
    if not valid:
        raise ConfigError(
            f"model {model!r}: deformable_stages must be stage indices in 0..{NUM_STAGES - 1} "
            f"(e.g. (2,) for the last stage), got {stages!r}"
        )
    return tuple(sorted(set(stages)))


class DeformableCifarResNet(CifarResNet):
    """CIFAR ResNet of depth `6n + 2` with deformable second convs in chosen stages.

    See the module docstring for the design; everything not named here is `CifarResNet`'s
    (stem, stages, head, `cost_breakdown`, `flops`, the classifier API).

    Args:
        depth: 6n + 2 (20, 32, ...).
        num_classes: classifier outputs.
        in_chans: input channels.
        width: channels of the first stage; the stages are `width, 2*width, 4*width`.
        deformable_stages: indices (0, 1, 2) of the stages whose blocks get a deformable
            second conv; default `(2,)`, the last. An empty tuple gives the plain ResNet.
        modulated: v2 (offsets and modulation) if True, v1 (offsets only) otherwise.

    Attributes:
        stages: as `CifarResNet`; the blocks of `deformable_stages` are
            `DeformableBasicBlock`s.
        deformable_stages: the sorted stage indices.
        default_input_shape: `(in_chans, 32, 32)`.

    Returns (forward):
        `DynamicOutput` with `logits (B, num_classes)`, `flops (B,)` (constant per sample,
        `flops(x.shape[1:])`) and `decisions["offset_magnitude"] (B,)`: the mean absolute
        offset, in input pixels, over every tap, position and deformable layer of each
        sample (0 at initialisation; it keeps its gradient, so it can be penalised).
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        *,
        deformable_stages: Sequence[int] = (2,),
        modulated: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        name = f"deformable_resnet{depth}"
        require_positive(name, depth=depth, num_classes=num_classes, in_chans=in_chans, width=width)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(
                f"model {name!r}: depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}"
            )
        stages = _check_stages(name, deformable_stages)
        if not isinstance(modulated, bool):
            raise ConfigError(f"model {name!r}: modulated must be True or False, got {modulated!r}")
        super().__init__(depth, num_classes, in_chans, width, device=device, dtype=dtype)
        self.name = name
        self.deformable_stages = stages
        self.modulated = modulated
        for stage in stages:
            blocks = self.stages[stage]
            for index, block in enumerate(blocks):
                conv1 = block.conv1.conv
                blocks[index] = DeformableBasicBlock(
                    conv1.in_channels, conv1.out_channels, conv1.stride[0],
                    modulated=modulated, device=device, dtype=dtype,
                )

    def forward(self, x: Tensor) -> DynamicOutput:
        """`(B, in_chans, H, W) -> DynamicOutput` (see the class docstring).

        Raises:
            ConfigError: `x` is not a `(B, in_chans, H, W)` batch.
        """
        if x.ndim != 4:
            raise ConfigError(
                f"model {self.name!r} expects a batch of shape (B, {self.in_chans}, H, W), got "
                f"a {x.ndim}-D tensor of shape {tuple(x.shape)}"
            )
        flops = self.flops(x.shape[1:])  # also checks the channels
        h = self.stem(x)
        total = h.new_zeros(x.shape[0])
        count = 0
        for blocks in self.stages:
            for block in blocks:
                if isinstance(block, DeformableBasicBlock):
                    h, offset = block.forward_with_offset(h)
                    total = total + offset.abs().flatten(1).sum(1)
                    count += offset[0].numel()
                else:
                    h = block(h)
        logits = self.forward_head(h)
        return DynamicOutput(
            logits=logits,
            decisions={"offset_magnitude": total / max(count, 1)},
            flops=constant_flops(flops, x.shape[0], x.device),
        )

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """The cost protocol: per-sample FLOPs on a `(in_chans, H, W)` input (the same for
        every input) and the per-sample logits shape `(num_classes,)`."""
        return self.flops(tuple(int(s) for s in in_shape)), (self.get_classifier().out_features,)


def _deformable_resnet(depth: int, **kwargs) -> DeformableCifarResNet:
    return DeformableCifarResNet(depth, **kwargs)


@register_model
def deformable_resnet20(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    width: int = 16,
    deformable_stages: Sequence[int] = (2,),
    modulated: bool = True,
    device=None,
    dtype=None,
) -> DeformableCifarResNet:
    """ResNet-20 with modulated deformable convs in the last stage. 3x32x32: 319,211 params, 87,598,336 FLOPs."""
    return _deformable_resnet(
        20, num_classes=num_classes, in_chans=in_chans, width=width,
        deformable_stages=deformable_stages, modulated=modulated, device=device, dtype=dtype,
    )


@register_model
def deformable_resnet32(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    width: int = 16,
    deformable_stages: Sequence[int] = (2,),
    modulated: bool = True,
    device=None,
    dtype=None,
) -> DeformableCifarResNet:
    """ResNet-32 with modulated deformable convs in the last stage. 3x32x32: 544,801 params, 148,202,752 FLOPs."""
    return _deformable_resnet(
        32, num_classes=num_classes, in_chans=in_chans, width=width,
        deformable_stages=deformable_stages, modulated=modulated, device=device, dtype=dtype,
    )
