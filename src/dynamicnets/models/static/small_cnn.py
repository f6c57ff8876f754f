"""`small_cnn`: a four-layer conv net for small grey-scale digits (sklearn digits, MNIST)."""
from __future__ import annotations

from torch import Tensor, nn

from ...outputs import DynamicOutput, constant_flops
from .._api import ClassifierApi
from .._registry import register_model
from ._checks import check_input_shape, require_positive
from .classifier_head import ClassifierHead
from .conv_norm_act import ConvNormAct


class SmallCNN(ClassifierApi, nn.Module):
    """Four 3x3 conv-BN-ReLU layers (widths `w, 2w, 2w, 4w`, strides `1, 2, 1, 2`),
    global average pooling and a linear classifier.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        width: `w`, the channels of the first layer.

    Attributes:
        features: `nn.ModuleList` of the four `ConvNormAct` layers, each callable alone.
        head: `ClassifierHead`, `(B, 4w, H', W') -> (B, num_classes)`.
        default_input_shape: `(in_chans, 8, 8)` (sklearn digits); MNIST is `(1, 28, 28)`.
        num_features: `4w` (classifier API: `dynamicnets.models.ClassifierApi`).

    Figures (10 classes, width 32): 131,178 params; 2,398,720 FLOPs on 1x8x8,
    29,355,520 FLOPs on 1x28x28 (2 FLOPs per multiply-add).

    Shapes:
        `(B, in_chans, H, W)` with any `H, W >= 1` -> `DynamicOutput` with
        `logits (B, num_classes)`, `flops (B,)`.
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, width: int = 32, *, device=None, dtype=None
    ) -> None:
        super().__init__()
        require_positive("small_cnn", num_classes=num_classes, in_chans=in_chans, width=width)
        factory = {"device": device, "dtype": dtype}
        self.in_chans = in_chans
        self.default_input_shape = (in_chans, 8, 8)
        plan = [(width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2)]
        self.features = nn.ModuleList()
        chans = in_chans
        for out_chans, stride in plan:
            self.features.append(ConvNormAct(chans, out_chans, 3, stride, **factory))
            chans = out_chans
        self.head = ClassifierHead(chans, num_classes, **factory)

    def forward_features(self, x: Tensor) -> Tensor:
        """`(B, in_chans, H, W) -> (B, 4w, ceil(H/4), ceil(W/4))`."""
        for layer in self.features:
            x = layer(x)
        return x

    def forward(self, x: Tensor) -> DynamicOutput:
        flops = self.flops(x.shape[1:])
        logits = self.forward_head(self.forward_features(x))
        return DynamicOutput(logits=logits, flops=constant_flops(flops, x.shape[0], x.device))

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs on a `(in_chans, H, W)` input (as `FlopCounterMode` counts)."""
        shape = check_input_shape("small_cnn", input_shape, self.in_chans, spatial_dims=2)
        total = 0
        for layer in self.features:
            flops, shape = layer.flops_and_shape(shape)
            total += flops
        return total + self.head.flops()


@register_model
def small_cnn(
    *, num_classes: int = 10, in_chans: int = 1, width: int = 32, device=None, dtype=None
) -> SmallCNN:
    """Small conv net for digits (1x8x8) and MNIST (1x28x28); see `SmallCNN`."""
    return SmallCNN(num_classes, in_chans, width, device=device, dtype=dtype)
