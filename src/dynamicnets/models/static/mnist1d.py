"""Models for MNIST-1D (Greydanus 2020): per-sample inputs `(1, 40)`.

`mnist1d_mlp` flattens the signal into a multi-layer perceptron; `mnist1d_cnn` is a
Conv1d-BN-ReLU stack with global average pooling and a linear classifier.
"""
from __future__ import annotations

from torch import Tensor, nn

from ...errors import ConfigError
from ...outputs import DynamicOutput, constant_flops
from ...flops import linear_flops
from .._api import ClassifierApi
from .._registry import register_model
from ._checks import check_input_shape, require_positive
from .classifier_head import ClassifierHead
from .conv_norm_act import ConvNormAct


class Mnist1dMLP(ClassifierApi, nn.Module):
    """Flatten, `depth` hidden `Linear + ReLU` layers of `hidden` units, linear classifier.

    Args:
        num_classes: classifier outputs.
        in_chans, length: the per-sample input shape `(in_chans, length)` it is built for.
        hidden: units per hidden layer.
        depth: number of hidden layers (0 gives a linear classifier).

    Attributes:
        hidden_layers: `nn.ModuleList` of `nn.Sequential(Linear, ReLU)`.
        head: `nn.Linear(hidden, num_classes)`.
        default_input_shape: `(in_chans, length)`; the only shape it accepts.
        num_features: `hidden` (`in_chans * length` for depth 0); `forward_features` is
            the output of the last hidden layer (classifier API: `dynamicnets.models.ClassifierApi`).

    Figures (10 classes, hidden 256, depth 2, input 1x40): 78,858 params, 156,672 FLOPs.

    Shapes:
        `(B, in_chans, length)` -> `DynamicOutput` with `logits (B, num_classes)`, `flops (B,)`.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        length: int = 40,
        hidden: int = 256,
        depth: int = 2,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        require_positive(
            "mnist1d_mlp", num_classes=num_classes, in_chans=in_chans, length=length, hidden=hidden
        )
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ConfigError(f"model 'mnist1d_mlp': depth must be an int >= 0, got {depth!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_chans = in_chans
        self.default_input_shape = (in_chans, length)
        self.hidden_layers = nn.ModuleList()
        features = in_chans * length
        for _ in range(depth):
            layer = nn.Sequential(nn.Linear(features, hidden, **factory), nn.ReLU(inplace=True))
            self.hidden_layers.append(layer)
            features = hidden
        self.head = nn.Linear(features, num_classes, **factory)

    head_path = "head"
    classifier_paths = ("head",)

    def forward_features(self, x: Tensor) -> Tensor:
        """`(B, in_chans, length) -> (B, num_features)`: flattened, through the hidden layers."""
        h = x.flatten(1)
        for layer in self.hidden_layers:
            h = layer(h)
        return h

    def forward(self, x: Tensor) -> DynamicOutput:
        flops = self.flops(x.shape[1:])
        logits = self.forward_head(self.forward_features(x))
        return DynamicOutput(logits=logits, flops=constant_flops(flops, x.shape[0], x.device))

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs on its `(in_chans, length)` input (as `FlopCounterMode` counts)."""
        shape = check_input_shape("mnist1d_mlp", input_shape, self.in_chans, spatial_dims=1)
        if shape != self.default_input_shape:
            raise ConfigError(
                f"model 'mnist1d_mlp' was built for inputs of shape {self.default_input_shape}, "
                f"got {shape}; set length to the signal length of the data"
            )
        layers = [seq[0] for seq in self.hidden_layers] + [self.head]
        return sum(linear_flops(layer) for layer in layers)


class Mnist1dCNN(ClassifierApi, nn.Module):
    """Three Conv1d-BN-ReLU layers (widths `w, 2w, 2w`, kernels `5, 3, 3`, strides
    `1, 2, 2`), global average pooling and a linear classifier.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        width: `w`, the channels of the first layer.

    Attributes:
        features: `nn.ModuleList` of the three `ConvNormAct` layers, each callable alone.
        head: `ClassifierHead`, `(B, 2w, L') -> (B, num_classes)`.
        default_input_shape: `(in_chans, 40)`; any length `L >= 1` works.
        num_features: `2w` (classifier API: `dynamicnets.models.ClassifierApi`).

    Figures (10 classes, width 32, input 1x40): 19,562 params; 505,600 FLOPs.

    Shapes:
        `(B, in_chans, L)` -> `DynamicOutput` with `logits (B, num_classes)`, `flops (B,)`.
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, width: int = 32, *, device=None, dtype=None
    ) -> None:
        super().__init__()
        require_positive("mnist1d_cnn", num_classes=num_classes, in_chans=in_chans, width=width)
        factory = {"device": device, "dtype": dtype, "spatial_dims": 1}
        self.in_chans = in_chans
        self.default_input_shape = (in_chans, 40)
        self.features = nn.ModuleList(
            [
                ConvNormAct(in_chans, width, 5, 1, **factory),
                ConvNormAct(width, 2 * width, 3, 2, **factory),
                ConvNormAct(2 * width, 2 * width, 3, 2, **factory),
            ]
        )
        self.head = ClassifierHead(2 * width, num_classes, device=device, dtype=dtype)

    def forward_features(self, x: Tensor) -> Tensor:
        """`(B, in_chans, L) -> (B, 2w, ceil(L/4))`."""
        for layer in self.features:
            x = layer(x)
        return x

    def forward(self, x: Tensor) -> DynamicOutput:
        flops = self.flops(x.shape[1:])
        logits = self.forward_head(self.forward_features(x))
        return DynamicOutput(logits=logits, flops=constant_flops(flops, x.shape[0], x.device))

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs on a `(in_chans, L)` input (as `FlopCounterMode` counts)."""
        shape = check_input_shape("mnist1d_cnn", input_shape, self.in_chans, spatial_dims=1)
        total = 0
        for layer in self.features:
            flops, shape = layer.flops_and_shape(shape)
            total += flops
        return total + self.head.flops()


@register_model
def mnist1d_mlp(
    *,
    num_classes: int = 10,
    in_chans: int = 1,
    length: int = 40,
    hidden: int = 256,
    depth: int = 2,
    device=None,
    dtype=None,
) -> Mnist1dMLP:
    """MLP for MNIST-1D (flattens `(in_chans, length)`); see `Mnist1dMLP`."""
    return Mnist1dMLP(num_classes, in_chans, length, hidden, depth, device=device, dtype=dtype)


@register_model
def mnist1d_cnn(
    *, num_classes: int = 10, in_chans: int = 1, width: int = 32, device=None, dtype=None
) -> Mnist1dCNN:
    """Conv1d net for MNIST-1D; see `Mnist1dCNN`."""
    return Mnist1dCNN(num_classes, in_chans, width, device=device, dtype=dtype)
