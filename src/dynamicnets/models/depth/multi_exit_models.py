"""Registered multi-exit models: `multi_exit_cnn`, `resnet_exits`, `cascade`."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ...errors import ConfigError
from .._api import ClassifierApi, check_num_classes
from .._registry import create_model, register_model
from ..static._checks import require_positive
from ..static.conv_norm_act import ConvNormAct
from ..static.resnet_cifar import CifarResNet
from .exit_head import ExitHead
from .multi_exit import MultiExitNetwork


@register_model
def multi_exit_cnn(
    *,
    num_classes: int = 10,
    in_chans: int = 1,
    width: int = 32,
    gradient_equilibrium: bool = False,
    device=None,
    dtype=None,
) -> MultiExitNetwork:
    """`small_cnn`'s four conv layers with three exits (digits 1x8x8, MNIST 1x28x28).

    Stages (`w = width`, each layer 3x3 conv-BN-ReLU):
    0: `in -> w` (stride 1), `w -> 2w` (stride 2); 1: `2w -> 2w`; 2: `2w -> 4w` (stride 2).
    Every exit is global average pooling + linear.

    Per-sample FLOPs on 1x8x8, width 32, 10 classes (cumulative, per exit):
    627,968 / 1,808,896 / 2,401,280 (the last = `small_cnn` 2,398,720 + the two
    intermediate heads' 2,560). `default_input_shape = (in_chans, 8, 8)`.
    """
    require_positive("multi_exit_cnn", num_classes=num_classes, in_chans=in_chans, width=width)
    factory = {"device": device, "dtype": dtype}
    w = width
    stages = [
        nn.Sequential(ConvNormAct(in_chans, w, 3, 1, **factory), ConvNormAct(w, 2 * w, 3, 2, **factory)),
        nn.Sequential(ConvNormAct(2 * w, 2 * w, 3, 1, **factory)),
        nn.Sequential(ConvNormAct(2 * w, 4 * w, 3, 2, **factory)),
    ]
    exits = [ExitHead(c, num_classes, **factory) for c in (2 * w, 2 * w, 4 * w)]
    return MultiExitNetwork(
        stages, exits, gradient_equilibrium=gradient_equilibrium, default_input_shape=(in_chans, 8, 8)
    )


@register_model
def resnet_exits(
    *,
    depth: int = 20,
    num_classes: int = 10,
    in_chans: int = 3,
    width: int = 16,
    exit_blocks: Sequence[int] | None = None,
    gradient_equilibrium: bool = False,
    device=None,
    dtype=None,
) -> MultiExitNetwork:
    """A CIFAR ResNet (`resnet20/32/56/110`, option-B shortcuts) with exits after chosen blocks.

    Args:
        depth: 6n + 2 (20, 32, 56, 110).
        exit_blocks: 0-based indices among the `3n` residual blocks after which an
            intermediate exit sits; default `[n-1, 2n-1]` (the ends of stages 1 and 2).
            The final exit (pool + linear, as in the ResNet) always follows the last block.
        width: channels of the first stage.

    Intermediate exits (Shallow-Deep Networks style) are one strided 3x3 conv-BN-ReLU
    of `min(2c, 4*width)` channels on their `c`-channel input, pooling and a linear layer.

    Per-sample FLOPs on 3x32x32, depth 20, 10 classes, default exits (cumulative):
    31,556,224 / 60,131,200 / 86,346,880; the last is `resnet20` (81,626,368 as
    `FlopCounterMode` counts it) plus the two intermediate heads (2,359,936 + 2,360,576).
    `default_input_shape = (in_chans, 32, 32)`.
    """
    resnet = CifarResNet(depth, num_classes, in_chans, width, device=device, dtype=dtype)
    blocks = [block for stage in resnet.stages for block in stage]
    per_stage = len(blocks) // 3
    if exit_blocks is None:
        exit_blocks = [per_stage - 1, 2 * per_stage - 1]
    chosen = sorted({int(b) for b in exit_blocks} | {len(blocks) - 1})
    if chosen[0] < 0 or chosen[-1] >= len(blocks):
        raise ConfigError(
            f"model 'resnet_exits': exit_blocks must be block indices in 0..{len(blocks) - 1}, got {list(exit_blocks)}"
        )
    factory = {"device": device, "dtype": dtype}
    stages, exits, start = [], [], 0
    for end in chosen:
        modules = ([resnet.stem] if start == 0 else []) + blocks[start : end + 1]
        stages.append(nn.Sequential(*modules))
        chans = blocks[end].conv2.conv.out_channels
        if end == len(blocks) - 1:
            exits.append(ExitHead(chans, num_classes, **factory))
        else:
            exits.append(ExitHead(chans, num_classes, hidden=(min(2 * chans, 4 * width),), stride=2, **factory))
        start = end + 1
    return MultiExitNetwork(
        stages, exits, gradient_equilibrium=gradient_equilibrium, default_input_shape=(in_chans, 32, 32)
    )


class ModelStage(nn.Module):
    """A whole model used as one stage of a cascade: `x -> model(x).logits`.

    Args:
        model: a model returning `DynamicOutput`, with `flops(input_shape) -> int`.
        num_classes: its number of logits.

    Shapes:
        `(B, *input_shape) -> (B, num_classes)`.
    """

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        if not callable(getattr(model, "flops", None)):
            raise ConfigError(f"a cascade member needs a flops(input_shape) method; {type(model).__name__} has none")
        self.model = model
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).logits

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """`(model.flops(in_shape), (num_classes,))`."""
        return int(self.model.flops(in_shape)), (self.num_classes,)


class Cascade(MultiExitNetwork):
    """A `MultiExitNetwork` of whole models: every stage a `ModelStage` that starts again
    from the input, every exit the identity on that member's logits.

    Classifier API (`dynamicnets.models.ClassifierApi`): `forward_features`,
    `forward_head`, `get_classifier` and `num_features` are the last member's (the final
    exit); `reset_classifier` resets every member's classifier.

    Args:
        stages: the `ModelStage`s, cheapest first; each member must have the classifier API.
        default_input_shape: canonical per-sample input shape.
    """

    def __init__(self, stages: Sequence[ModelStage], *, default_input_shape: tuple[int, ...] | None = None) -> None:
        for stage in stages:
            if not isinstance(stage.model, ClassifierApi):
                raise ConfigError(
                    f"a cascade member needs the classifier API (ClassifierApi); {type(stage.model).__name__} "
                    "does not have it"
                )
        super().__init__(
            stages,
            [nn.Identity() for _ in stages],
            restart_stages=range(1, len(stages)),
            default_input_shape=default_input_shape,
        )

    def forward_features(self, x: Tensor) -> Tensor:
        """The last member's `forward_features(x)` (it starts from the input)."""
        return self.stages[-1].model.forward_features(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """The last member's `forward_head(features)`: `(B, num_classes)`."""
        return self.stages[-1].model.forward_head(features)

    @property
    def classifier_paths(self) -> tuple[str, ...]:
        """Every member's classifier layer(s), the last member's last."""
        return tuple(
            f"stages.{i}.model.{path}" for i, stage in enumerate(self.stages) for path in stage.model.classifier_paths
        )

    @property
    def num_features(self) -> int:
        """The last member's `num_features`."""
        return self.stages[-1].model.num_features

    def reset_classifier(self, num_classes: int) -> None:
        """Reset every member's classifier to `num_classes` outputs (see `ClassifierApi`)."""
        check_num_classes("cascade", num_classes)
        for stage in self.stages:
            stage.model.reset_classifier(num_classes)
            stage.num_classes = num_classes
        self.classifier_changed()


@register_model
def cascade(
    *,
    members: Sequence[str] = ("small_cnn", "small_cnn"),
    member_args: Sequence[Mapping] | None = ({"width": 8}, {"width": 32}),
    num_classes: int = 10,
    in_chans: int = 1,
    device=None,
    dtype=None,
) -> Cascade:
    """A cascade of independent registered models, cheapest first.

    Each member is a stage that starts again from the input and its exit is its own
    logits; a sample moves on to the next member only when the exit criterion is not
    met. Runs through the same executor and calibration as any multi-exit network.

    Args:
        members: registered model names, e.g. `("resnet20", "resnet56")` (then pass
            `in_chans=3`).
        member_args: per-member extra keyword arguments (`None` for none).

    Default (small_cnn width 8 -> width 32) on 1x8x8, 10 classes, cumulative FLOPs per
    exit: 157,312 / 2,556,032 (the second = both members). `default_input_shape` is the
    first member's. `members=("resnet20", "resnet56"), member_args=None, in_chans=3` on
    3x32x32: 81,626,368 / 333,122,048.
    """
    if len(members) < 1:
        raise ConfigError("model 'cascade': members must name at least one registered model")
    member_args = [{}] * len(members) if member_args is None else [dict(a or {}) for a in member_args]
    if len(member_args) != len(members):
        raise ConfigError(f"model 'cascade': {len(members)} members but {len(member_args)} member_args")
    models = [
        create_model(name, num_classes=num_classes, in_chans=in_chans, device=device, dtype=dtype, **extra)
        for name, extra in zip(members, member_args)
    ]
    stages = [ModelStage(m, num_classes) for m in models]
    return Cascade(stages, default_input_shape=getattr(models[0], "default_input_shape", None))
