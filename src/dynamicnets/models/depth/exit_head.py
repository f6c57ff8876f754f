"""`ExitHead`: the classifier attached to an intermediate point of a backbone."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ...flops import linear_flops
from ..static.conv_norm_act import ConvNormAct
from .tree import ShapeTree, State


class ExitHead(nn.Module):
    """Optional strided 3x3 conv-BN-ReLU layers, global average pooling, a linear layer.

    With `hidden=()` it is the plain "pool + linear" head of a ResNet; with hidden
    widths it is the small convolutional classifier of MSDNet / Shallow-Deep Networks,
    which lets features that are still local (early in the trunk) be pooled usefully.

    Args:
        in_chans: channels of the features the head reads.
        num_classes: logits out.
        hidden: widths of the conv layers before pooling (each `ConvNormAct`, 3x3).
        stride: stride of each of those conv layers.
        scale_index: when the trunk passes a list of feature maps (one per scale), the
            head reads `features[scale_index]` (MSDNet: `-1`, the coarsest); `None` for
            a single tensor.

    Attributes:
        in_chans: channels of the features it reads.

    Shapes:
        `(B, in_chans, H, W)` (or a list holding it) -> `(B, num_classes)`; `select` picks
        the tensor out of a list, `classify` maps that tensor to the logits.
    """

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        hidden: Sequence[int] = (),
        stride: int = 2,
        *,
        scale_index: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.scale_index = scale_index
        self.in_chans = in_chans
        self.convs = nn.ModuleList()
        chans = in_chans
        for width in hidden:
            self.convs.append(ConvNormAct(chans, width, 3, stride, **factory))
            chans = width
        self.fc = nn.Linear(chans, num_classes, **factory)

    def forward(self, features: State) -> Tensor:
        return self.classify(self.select(features))

    def select(self, features: State) -> Tensor:
        """The `(B, in_chans, H, W)` tensor the head reads: `features[scale_index]`, or
        `features` itself when `scale_index` is None."""
        return features if self.scale_index is None else features[self.scale_index]

    def classify(self, x: Tensor) -> Tensor:
        """`(B, in_chans, H, W) -> (B, num_classes)`: the conv layers, pooling, the linear layer."""
        for conv in self.convs:
            x = conv(x)
        return self.fc(x.mean(dim=tuple(range(2, x.ndim))))

    def flops_and_shape(self, in_shape: ShapeTree) -> tuple[int, tuple[int]]:
        """Per-sample FLOPs on `in_shape` (`(C, H, W)` or a list of them) and `(num_classes,)`."""
        shape = in_shape if self.scale_index is None else in_shape[self.scale_index]
        total = 0
        for conv in self.convs:
            flops, shape = conv.flops_and_shape(shape)
            total += flops
        return total + linear_flops(self.fc), (self.fc.out_features,)
