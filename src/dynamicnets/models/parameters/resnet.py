"""CIFAR ResNets with dynamic parameters: CondConv, DY-Conv, WeightNet convs and/or DY-ReLU.

The layout is `dynamicnets.models.static.CifarResNet` (6n+2 layers, widths
`w, 2w, 4w`, option-B 1x1 projection shortcuts); the two 3x3 convs of every basic
block use the chosen conv, and every activation (stem, inside blocks, after each
residual sum) the chosen activation. Stem, shortcuts and classifier stay static, as
in the CondConv and DY-Conv papers.

Figures on 3x32x32, 10 classes, width 16 (`tests/parameters/test_parameters_models.py` checks them):

| model             | params    | FLOPs      |
|-------------------|-----------|------------|
| resnet20 (static) |   272,474 | 81,626,368 |
| resnet20_condconv | 1,076,834 | 83,769,472 |
| resnet20_dyconv   | 1,082,222 | 83,779,936 |
| resnet20_dyrelu   |   296,766 | 81,669,248 |

CondConv/DY-Conv (K = 4) hold 4x the block kernels and add 2.6% FLOPs (routing and
kernel mixing); DY-ReLU-B adds 9% parameters and 0.05% FLOPs (its hyper functions).
"""
from __future__ import annotations

from torch import Tensor, nn

from ...errors import ConfigError
from ...layers.dy_relu import DyReLUHyperFunction
from ...outputs import DynamicOutput
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import check_input_shape, require_positive
from ..static.classifier_head import ClassifierHead
from ..static.conv_norm_act import ConvNormAct
from .units import DynamicConvNormAct, check_choices, make_activation, routed_output


class DynamicBasicBlock(nn.Module):
    """`act(conv2(conv1(x)) + shortcut(x))` with dynamic 3x3 convs and activations.

    Args:
        in_chans, out_chans, stride: of the block.
        conv, activation, num_experts: see `DynamicConvNormAct`.

    Shapes:
        `forward(x (B, C_in, H, W), temperature=None) -> (y (B, C_out, H', W'),
        list of (B, K) routing weights, one per routed conv)`.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        stride: int = 1,
        *,
        conv: str = "static",
        activation: str = "relu",
        num_experts: int = 4,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        kinds = {"conv": conv, "num_experts": num_experts}
        self.conv1 = DynamicConvNormAct(
            in_chans, out_chans, 3, stride, activation=activation, **kinds, **factory
        )
        self.conv2 = DynamicConvNormAct(
            out_chans, out_chans, 3, 1, activation="none", **kinds, **factory
        )
        if stride != 1 or in_chans != out_chans:
            self.shortcut: nn.Module = ConvNormAct(
                in_chans, out_chans, 1, stride, act=False, **factory
            )
        else:
            self.shortcut = nn.Identity()
        self.act = make_activation(activation, out_chans, **factory)

    def forward(self, x: Tensor, temperature: float | None = None) -> tuple[Tensor, list[Tensor]]:
        y, r1 = self.conv1(x, temperature)
        y, r2 = self.conv2(y, temperature)
        routing = [r for r in (r1, r2) if r is not None]
        return self.act(y + self.shortcut(x)), routing

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Per-sample FLOPs on a `(C, H, W)` input and the `(C', H', W')` output shape."""
        flops1, mid = self.conv1.flops_and_shape(in_shape)
        flops2, out = self.conv2.flops_and_shape(mid)
        flops = flops1 + flops2
        if isinstance(self.shortcut, ConvNormAct):
            flops += self.shortcut.flops_and_shape(in_shape)[0]
        if hasattr(self.act, "flops"):
            flops += self.act.flops(out[1], out[2])
        return flops, out


class DynamicCifarResNet(ClassifierApi, nn.Module):
    """CIFAR ResNet of depth `6n + 2` with the conv and activation chosen by name.

    Args:
        depth: 6n + 2.
        num_classes, in_chans, width: as `CifarResNet`.
        conv: `"static"`, `"condconv"`, `"dyconv"` or `"weightnet"` for the block convs.
        activation: `"relu"`, `"relu6"` or `"dyrelu_a"`/`"dyrelu_b"`/`"dyrelu_c"`.
        num_experts: `K` of CondConv / DY-Conv.
        name: used in error messages.

    Attributes:
        default_input_shape: `(in_chans, 32, 32)`.
        num_features: `4 * width` (classifier API: `dynamicnets.models.ClassifierApi`;
            `forward_features(x, temperature=None)` is the unpooled last feature map).

    Returns (forward(x, temperature=None)):
        `DynamicOutput` with `logits (B, num_classes)`, constant `flops (B,)` and, for
        routed convs, `decisions["routing"]`: `(B, L, K)` routing weights of the `L`
        routed convs in execution order. `temperature` reaches every routed conv (anneal
        DY-Conv with a schedule while training).
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        *,
        conv: str = "static",
        activation: str = "relu",
        num_experts: int = 4,
        name: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        name = name or f"resnet{depth}_{conv}_{activation}"
        require_positive(
            name, depth=depth, num_classes=num_classes, in_chans=in_chans, width=width,
            num_experts=num_experts,
        )
        check_choices(name, conv, activation)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(
                f"model {name!r}: depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}"
            )
        factory = {"device": device, "dtype": dtype}
        self.name = name
        self.in_chans = in_chans
        self.default_input_shape = (in_chans, 32, 32)
        self.stem = DynamicConvNormAct(in_chans, width, 3, 1, activation=activation, **factory)
        self.stages = nn.ModuleList()
        chans = width
        for stage_index, stage_width in enumerate((width, 2 * width, 4 * width)):
            blocks = nn.ModuleList()
            for block_index in range((depth - 2) // 6):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(
                    DynamicBasicBlock(
                        chans, stage_width, stride, conv=conv, activation=activation,
                        num_experts=num_experts, **factory,
                    )
                )
                chans = stage_width
            self.stages.append(blocks)
        self.head = ClassifierHead(chans, num_classes, **factory)

    def forward_routed(
        self, x: Tensor, temperature: float | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """`(B, C, H, W) -> (features (B, 4w, H/4, W/4), routing weights per routed conv)`."""
        x, _ = self.stem(x)
        routing: list[Tensor] = []
        for blocks in self.stages:
            for block in blocks:
                x, block_routing = block(x, temperature)
                routing.extend(block_routing)
        return x, routing

    def forward_features(self, x: Tensor, temperature: float | None = None) -> Tensor:
        """`(B, C, H, W) -> (B, 4w, H/4, W/4)`, the features `forward_routed` returns."""
        return self.forward_routed(x, temperature)[0]

    def forward(self, x: Tensor, temperature: float | None = None) -> DynamicOutput:
        return routed_output(self, x, temperature)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs on a `(in_chans, H, W)` input, as `FlopCounterMode` counts.

        Includes routing functions, kernel aggregation / generation and DY-ReLU hyper
        functions, as executed.
        """
        shape = check_input_shape(self.name, input_shape, self.in_chans, spatial_dims=2)
        flops, shape = self.stem.flops_and_shape(shape)
        for blocks in self.stages:
            for block in blocks:
                block_flops, shape = block.flops_and_shape(shape)
                flops += block_flops
        return flops + self.head.flops()


def dynamic_resnet_cifar(
    depth: int = 20,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    width: int = 16,
    conv: str = "static",
    activation: str = "relu",
    num_experts: int = 4,
    device=None,
    dtype=None,
) -> DynamicCifarResNet:
    """Builder behind the registered models: any depth, conv and activation."""
    return DynamicCifarResNet(
        depth, num_classes, in_chans, width, conv=conv, activation=activation,
        num_experts=num_experts, device=device, dtype=dtype,
    )


@register_model
def resnet20_condconv(
    *, num_classes: int = 10, in_chans: int = 3, width: int = 16, num_experts: int = 4,
    activation: str = "relu", device=None, dtype=None,
) -> DynamicCifarResNet:
    """ResNet-20 with CondConv (sigmoid routing, K=4) block convs."""
    return DynamicCifarResNet(
        20, num_classes, in_chans, width, conv="condconv", activation=activation,
        num_experts=num_experts, name="resnet20_condconv", device=device, dtype=dtype,
    )


@register_model
def resnet20_dyconv(
    *, num_classes: int = 10, in_chans: int = 3, width: int = 16, num_experts: int = 4,
    activation: str = "relu", device=None, dtype=None,
) -> DynamicCifarResNet:
    """ResNet-20 with DY-Conv (softmax attention with temperature, K=4) block convs."""
    return DynamicCifarResNet(
        20, num_classes, in_chans, width, conv="dyconv", activation=activation,
        num_experts=num_experts, name="resnet20_dyconv", device=device, dtype=dtype,
    )


@register_model
def resnet20_dyrelu(
    *, num_classes: int = 10, in_chans: int = 3, width: int = 16, variant: str = "b",
    conv: str = "static", start_as_relu: bool = False, device=None, dtype=None,
) -> DynamicCifarResNet:
    """ResNet-20 with DY-ReLU (variant B by default) for every activation.

    `start_as_relu=True` (variants A and B) zeroes every hyper function's last layer, so the
    fresh model computes exactly a ReLU ResNet-20 with the same convs (`conv="static"`: the
    plain ResNet-20): fine-tune it from trained ResNet-20 weights (`init_from`) without
    first losing their accuracy.
    """
    if not isinstance(start_as_relu, bool):
        raise ConfigError(f"model 'resnet20_dyrelu': start_as_relu must be true or false, got {start_as_relu!r}")
    if start_as_relu and str(variant).lower() == "c":
        raise ConfigError("model 'resnet20_dyrelu': start_as_relu needs variant 'a' or 'b' (variant c scales "
                          "by a spatial attention, so it never starts as a plain ReLU)")
    model = DynamicCifarResNet(
        20, num_classes, in_chans, width, conv=conv, activation=f"dyrelu_{str(variant).lower()}",
        name="resnet20_dyrelu", device=device, dtype=dtype,
    )
    if start_as_relu:
        for module in model.modules():
            if isinstance(module, DyReLUHyperFunction):
                module.start_at_initial_pieces()
    return model
