"""`stn_cnn`: a spatial transformer in front of a small CNN (Jaderberg et al., NeurIPS 2015).

On cluttered MNIST (a 28x28 digit somewhere on a 60x60 canvas, with clutter) the
transformer's localisation network finds the digit and samples a small glimpse (28x28 by
default); the classifier (`small_cnn`) runs on the glimpse only. The static baseline runs
the same classifier on the whole canvas: `small_cnn` takes any input size, so
`model: small_cnn` on the `cluttered_mnist:` data is that baseline (134,786,560 FLOPs on
1x60x60 at width 32, against 29,784,704 here: 29,355,520 for the CNN on the glimpse plus
429,184 for the localisation network and its regressor).
"""
from __future__ import annotations

from torch import Tensor, nn

from ...layers.spatial_transformer import SpatialTransformer
from ...outputs import DynamicOutput, constant_flops
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import check_input_shape
from ..static.small_cnn import SmallCNN


class STNClassifier(ClassifierApi, nn.Module):
    """`SpatialTransformer -> classifier` on the glimpse.

    Args:
        transformer: the `SpatialTransformer` (its `output_size` is the classifier's input).
        classifier: a `SmallCNN` (any model with `forward_features`, `head` and `flops`).

    Attributes:
        transformer, classifier, in_chans, default_input_shape (`(C, *input_size)`).

    Classifier API: `forward_features(x)` is the classifier's feature map on the glimpse,
    `forward_head` its pool + linear layer.

    Shapes:
        `(B, C, H, W) -> DynamicOutput` with `logits (B, num_classes)`, `flops (B,)` (the
        same for every sample: localisation + regressor + classifier, as `FlopCounterMode`
        counts; the sampling is free, see `cost_breakdown`) and `decisions["theta"]
        (B, 2, 3)`, the affine transform each sample's glimpse was sampled with.
    """

    name = "stn_cnn"
    head_path = "classifier.head"
    classifier_paths = ("classifier.head.fc",)

    def __init__(self, transformer: SpatialTransformer, classifier: SmallCNN) -> None:
        super().__init__()
        self.transformer = transformer
        self.classifier = classifier
        self.in_chans = transformer.in_chans
        self.default_input_shape = (transformer.in_chans, *transformer.input_size)

    def forward_features(self, x: Tensor) -> Tensor:
        """`(B, C, H, W) -> (B, num_features, H', W')`: the classifier's features on the glimpse."""
        return self.classifier.forward_features(self.transformer(x))

    def forward(self, x: Tensor, theta: Tensor | None = None) -> DynamicOutput:
        """Localise (unless `theta (B, 2, 3)` is given), sample the glimpse, classify it."""
        flops = self.flops(x.shape[1:])
        theta = self.transformer.transform(x) if theta is None else theta
        logits = self.forward_head(self.classifier.forward_features(self.transformer.sample(x, theta)))
        return DynamicOutput(logits=logits, decisions={"theta": theta},
                             flops=constant_flops(flops, x.shape[0], x.device))

    def cost_breakdown(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        """Per-sample FLOPs on a `(C, H, W)` input: the transformer's parts (`localisation`,
        `regressor`, `sampling`) and `classifier` (on the glimpse)."""
        shape = check_input_shape("stn_cnn", input_shape, self.in_chans, spatial_dims=2)
        parts = self.transformer.cost_breakdown(shape)
        parts["classifier"] = self.classifier.flops((shape[0], *self.transformer.output_size))
        return parts

    def flops(self, input_shape: tuple[int, ...], include_sampling: bool = False) -> int:
        """Per-sample FLOPs as `FlopCounterMode` counts them (what `forward` reports), plus the
        grid sampling's arithmetic when `include_sampling`."""
        parts = self.cost_breakdown(input_shape)
        return sum(v for k, v in parts.items() if include_sampling or k != "sampling")


@register_model
def stn_cnn(
    *,
    num_classes: int = 10,
    in_chans: int = 1,
    canvas: int = 60,
    glimpse: int = 28,
    width: int = 32,
    attention: bool = False,
    loc_pool: int = 20,
    loc_width: int = 8,
    loc_hidden: int = 32,
    device=None,
    dtype=None,
) -> STNClassifier:
    """Spatial transformer + `small_cnn` on a glimpse, for cluttered MNIST; see `STNClassifier`.

    Defaults (1x60x60 canvas, 28x28 glimpse, width 32, 10 classes): 147,816 params;
    29,784,704 FLOPs per sample (localisation 428,800 + regressor 384 + CNN 29,355,520;
    the bilinear sampling, not counted, is 15,680 more). `attention=True` regresses scale
    and translation only.
    """
    factory = {"device": device, "dtype": dtype}
    transformer = SpatialTransformer(in_chans, canvas, glimpse, attention=attention, loc_pool=loc_pool,
                                     loc_width=loc_width, loc_hidden=loc_hidden, **factory)
    return STNClassifier(transformer, SmallCNN(num_classes, in_chans, width, **factory))
