"""A MobileNetV2 for CIFAR-sized inputs with switchable dynamic convs and activations.

MobileNetV2 (Sandler et al., CVPR 2018): a 3x3 stem, 17 inverted residual blocks
(1x1 expansion, 3x3 depthwise, linear 1x1 projection; `(t, c, n, s)` settings of the
paper), a 1x1 conv to 1280 channels, pooling and a linear classifier. For 32x32 inputs
the stem and the second stage use stride 1 (as the common CIFAR ports do), giving
4x4 final features. `width_mult` scales every width but the last (rounded to
multiples of 8, as in the paper).

Switches: `conv` replaces the three convs of every block by CondConv, DY-Conv or
WeightNet (stem and last conv stay static); `activation` replaces every activation by
ReLU, ReLU6 or DY-ReLU (A/B/C), the setting of the DY-ReLU paper's MobileNetV2 table.

Figures on 3x32x32, 10 classes (`tests/parameters/test_parameters_models.py` checks them):

| width | conv      | activation | params     | FLOPs       |
|-------|-----------|------------|------------|-------------|
| 0.35  | static    | relu       |    408,938 |  31,222,272 |
| 0.35  | static    | dyrelu_b   |  2,168,858 |  34,688,512 |
| 0.5   | static    | relu       |    700,490 |  55,938,048 |
| 0.5   | static    | dyrelu_b   |  3,180,086 |  60,827,008 |
| 0.5   | condconv  | relu       |  2,123,730 |  59,711,936 |
| 0.5   | dyconv    | relu       |  2,678,170 |  60,816,896 |
| 0.5   | weightnet | relu       |  3,883,962 |  63,200,896 |
| 1.0   | static    | relu       |  2,236,682 | 175,952,896 |

With `stem_stride=2` (the paper's stem; 2x2 final features on 32x32), width 0.35:
static/ReLU 408,938 params, 7,824,768 FLOPs; DY-ReLU-B 2,168,858 / 11,291,008 (+44%: the
hyper functions do not shrink with the feature maps); CondConv 1,146,498 / 9,776,000;
DY-Conv 1,418,500 / 10,317,168.

At width 0.35 DY-ReLU-B costs +11% FLOPs, close to the paper's +10% MAdds on ImageNet
(59.2M -> 65.0M); its parameter overhead is larger relative to this CIFAR network,
whose 10-class classifier is tiny (most of it is the hyper function of the 1280-wide
last activation).
"""
from __future__ import annotations

from torch import Tensor, nn

from ...errors import ConfigError
from ...outputs import DynamicOutput
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import check_input_shape, require_positive
from ..static.classifier_head import ClassifierHead
from .units import DynamicConvNormAct, check_choices, routed_output

# (expansion t, channels c, blocks n, first stride s); CIFAR strides (paper: s=2 in row 2).
CIFAR_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped for `t = 1`) -> 3x3 depthwise -> linear 1x1 projection.

    The residual connection is used when `stride == 1` and `in_chans == out_chans`.

    Shapes:
        `forward(x (B, C_in, H, W), temperature=None) -> (y (B, C_out, H', W'),
        list of (B, K) routing weights)`.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        stride: int,
        expand_ratio: int,
        *,
        conv: str = "static",
        activation: str = "relu",
        num_experts: int = 4,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        common = {"conv": conv, "num_experts": num_experts, "device": device, "dtype": dtype}
        hidden = in_chans * expand_ratio
        self.expand = (
            DynamicConvNormAct(in_chans, hidden, 1, 1, activation=activation, **common)
            if expand_ratio != 1
            else None
        )
        self.depthwise = DynamicConvNormAct(
            hidden, hidden, 3, stride, groups=hidden, activation=activation, **common
        )
        self.project = DynamicConvNormAct(hidden, out_chans, 1, 1, activation="none", **common)
        self.use_residual = stride == 1 and in_chans == out_chans

    def units(self) -> list[DynamicConvNormAct]:
        return [u for u in (self.expand, self.depthwise, self.project) if u is not None]

    def forward(self, x: Tensor, temperature: float | None = None) -> tuple[Tensor, list[Tensor]]:
        y, routing = x, []
        for unit in self.units():
            y, r = unit(y, temperature)
            if r is not None:
                routing.append(r)
        return (x + y if self.use_residual else y), routing

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Per-sample FLOPs on a `(C, H, W)` input and the `(C', H', W')` output shape."""
        total, shape = 0, in_shape
        for unit in self.units():
            flops, shape = unit.flops_and_shape(shape)
            total += flops
        return total, shape


class MobileNetV2Cifar(ClassifierApi, nn.Module):
    """MobileNetV2 for small images, conv and activation chosen by name.

    Args:
        num_classes, in_chans: classifier outputs and input channels.
        width_mult: multiplier of every width but the last conv's.
        conv: `"static"`, `"condconv"`, `"dyconv"` or `"weightnet"` for block convs.
        activation: `"relu"`, `"relu6"`, `"dyrelu_a"`, `"dyrelu_b"` or `"dyrelu_c"`.
        num_experts: `K` of CondConv / DY-Conv.
        last_channels: width of the final 1x1 conv (1280 in the paper, scaled up only
            for `width_mult > 1`).
        stem_stride: 1 (the CIFAR ports: 4x4 final features on 32x32) or 2 (the paper's
            stem stride: 2x2 final features, about 4x fewer FLOPs; the short CPU
            schedules of the benchmarks use it).

    Attributes:
        default_input_shape: `(in_chans, 32, 32)`.
        num_features: channels of the last 1x1 conv (classifier API:
            `dynamicnets.models.ClassifierApi`; `forward_features(x, temperature=None)`
            is its unpooled output).

    Returns (forward(x, temperature=None)):
        `DynamicOutput` with `logits (B, num_classes)`, constant `flops (B,)` and, for
        routed convs, `decisions["routing"]` `(B, L, K)`.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 0.5,
        *,
        conv: str = "static",
        activation: str = "relu",
        num_experts: int = 4,
        last_channels: int = 1280,
        stem_stride: int = 1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        name = "mobilenetv2_cifar"
        if stem_stride not in (1, 2):
            raise ConfigError(f"model {name!r}: stem_stride must be 1 or 2, got {stem_stride!r}")
        require_positive(
            name, num_classes=num_classes, in_chans=in_chans, num_experts=num_experts,
            last_channels=last_channels,
        )
        check_choices(name, conv, activation)
        valid = isinstance(width_mult, (int, float)) and not isinstance(width_mult, bool)
        if not valid or width_mult <= 0:
            raise ConfigError(
                f"model {name!r}: width_mult must be a number > 0, got {width_mult!r}"
            )
        factory = {"device": device, "dtype": dtype}
        self.name = name
        self.in_chans = in_chans
        self.default_input_shape = (in_chans, 32, 32)
        chans = make_divisible(32 * width_mult)
        self.stem = DynamicConvNormAct(in_chans, chans, 3, stem_stride, activation=activation, **factory)
        self.blocks = nn.ModuleList()
        for expand_ratio, channels, repeats, first_stride in CIFAR_SETTINGS:
            out_chans = make_divisible(channels * width_mult)
            for index in range(repeats):
                self.blocks.append(
                    InvertedResidual(
                        chans, out_chans, first_stride if index == 0 else 1, expand_ratio,
                        conv=conv, activation=activation, num_experts=num_experts, **factory,
                    )
                )
                chans = out_chans
        last = make_divisible(last_channels * max(1.0, width_mult))
        self.last = DynamicConvNormAct(chans, last, 1, 1, activation=activation, **factory)
        self.head = ClassifierHead(last, num_classes, **factory)

    def forward_routed(
        self, x: Tensor, temperature: float | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """`(B, C, H, W) -> (features (B, last, H/8, W/8), routing weights per routed conv)`."""
        x, _ = self.stem(x)
        routing: list[Tensor] = []
        for block in self.blocks:
            x, block_routing = block(x, temperature)
            routing.extend(block_routing)
        x, _ = self.last(x)
        return x, routing

    def forward_features(self, x: Tensor, temperature: float | None = None) -> Tensor:
        """`(B, C, H, W) -> (B, last, H/8, W/8)`, the features `forward_routed` returns."""
        return self.forward_routed(x, temperature)[0]

    def forward(self, x: Tensor, temperature: float | None = None) -> DynamicOutput:
        return routed_output(self, x, temperature)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs on a `(in_chans, H, W)` input, as `FlopCounterMode` counts."""
        shape = check_input_shape(self.name, input_shape, self.in_chans, spatial_dims=2)
        flops, shape = self.stem.flops_and_shape(shape)
        for block in self.blocks:
            block_flops, shape = block.flops_and_shape(shape)
            flops += block_flops
        last_flops, shape = self.last.flops_and_shape(shape)
        return flops + last_flops + self.head.flops()


@register_model
def mobilenetv2_cifar(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    width_mult: float = 0.5,
    conv: str = "static",
    activation: str = "relu",
    num_experts: int = 4,
    stem_stride: int = 1,
    device=None,
    dtype=None,
) -> MobileNetV2Cifar:
    """MobileNetV2 for 32x32 inputs; `conv` and `activation` switch in dynamic layers."""
    return MobileNetV2Cifar(
        num_classes, in_chans, width_mult, conv=conv, activation=activation,
        num_experts=num_experts, stem_stride=stem_stride, device=device, dtype=dtype,
    )
