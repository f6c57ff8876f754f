"""A cascade over the widths of one slimmable network: narrow first, wider only when unsure.

The members of an ordinary cascade are separate models; here they are the widths of one
set of weights (a slimmable network), so the cascade costs no extra parameters and no
retraining: every sample runs the narrowest width, and a sample whose prediction is not
confident enough runs again, from the input, at the next width. It is a `MultiExitNetwork`
(every width a stage that restarts from the input, every exit the identity on that width's
logits), so the early-exit tools all apply: `calibrate_thresholds` fits the confidence
thresholds to a mean-FLOPs budget, `run_early_exit` runs it compactly (each width on just
the samples that reached it), `dynamicnets.deploy` exports it.

With the universal norm (`norm="universal"`, one BatchNorm sliced for every width) the
widths share running statistics, so recalibrated statistics can fit only one of the
cascade's widths; the switchable norm (one BatchNorm per width) has no such coupling.
An exported cascade (`dynamicnets.deploy`) holds one graph per width, each with its own
copy of the slices it runs (about one copy of the weights per width).

Nothing computed at a narrow width is reused by a wider one (a wider width's channels
differ from the first ones of a narrower width wherever a layer reads more inputs), so a
sample that goes on pays for every width it ran: `exit_costs` counts exactly that.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...inference.policy import ExitPolicy
from ...outputs import DynamicOutput
from ...layers.slimmable import WidthLadder
from .._api import check_num_classes
from .._registry import create_model, register_model
from ..depth.multi_exit import MultiExitNetwork


class WidthStage(nn.Module):
    """One width of a shared slimmable network as a cascade stage: `x -> logits`.

    The network is held by reference, outside this module's children, so that the cascade
    registers it once (as `backbone`) and its state dict is the network's.

    Shapes:
        `(B, *input_shape) -> (B, num_classes)`.
    """

    def __init__(self, backbone: nn.Module, width: float, num_classes: int) -> None:
        super().__init__()
        self._backbone = (backbone,)
        self.width = float(width)
        self.num_classes = int(num_classes)

    @property
    def backbone(self) -> nn.Module:
        return self._backbone[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone.forward_logits(x, self.width)

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """`(backbone.flops(in_shape, width), (num_classes,))`."""
        return int(self.backbone.flops(tuple(in_shape), self.width)), (self.num_classes,)

    def extra_repr(self) -> str:
        return f"width={self.width:g}"


class WidthCascade(MultiExitNetwork):
    """The widths of one slimmable network run as a cascade, narrowest first.

    Args:
        backbone: a slimmable network (a `WidthLadder` with `forward_logits(x, width)`,
            `flops(input_shape, width)`, `widths` and `num_classes`), e.g. a trained
            `SlimmableResNet`. Its weights are shared, not copied.
        widths: the widths to run, ascending, each one the backbone can run (configured
            widths for switchable norm); the last is the final exit. `None`: every
            configured width of the backbone.

    Attributes:
        backbone: the network (the state dict's keys are `backbone.*`).
        widths: the cascade's widths, ascending.

    Budgets and speedups are relative to the widest cascade width alone
    (`reference_flops`, `reference_forward`), the static network the cascade stands for.

    Returns (forward):
        `forward(x)`: `DynamicOutput` with `exit_logits` (one `(B, C)` tensor per width,
        narrowest first), `logits` the widest's and `flops (B,)` the sum of every width's
        cost (the run-everything reference, and the training path: a sandwich over these
        widths). `forward(x, policy)` (eval mode, an `ExitPolicy`): the compact cascade
        (`run_early_exit`), `logits (B, C)` of the width each sample ended at, `flops (B,)`
        what it paid, `decisions["exit_index"]` and `decisions["width"]` `(B,)`.

    Classifier API: `forward_features(x)` / `forward_head` are the backbone's at the widest
    cascade width; `reset_classifier` resets the backbone's classifier, which every width shares.
    """

    def __init__(self, backbone: nn.Module, widths: Sequence[float] | None = None) -> None:
        needed = ("forward_logits", "flops", "get_classifier")
        if not isinstance(backbone, WidthLadder) or not all(callable(getattr(backbone, a, None)) for a in needed):
            raise ConfigError(
                f"a width cascade needs a slimmable network (a WidthLadder with forward_logits(x, width), "
                f"flops(input_shape, width) and get_classifier(), e.g. a SlimmableResNet); "
                f"{type(backbone).__name__} is not one"
            )
        widths = backbone.widths if widths is None else widths
        checked = [backbone.check_width(float(w)) for w in widths]
        if not checked or any(b <= a for a, b in zip(checked, checked[1:])):
            raise ConfigError(f"width cascade: widths must be one or more increasing widths, got {list(widths)}")
        num_classes = int(backbone.get_classifier().out_features)
        stages = [WidthStage(backbone, w, num_classes) for w in checked]
        super().__init__(
            stages, [nn.Identity() for _ in stages], restart_stages=range(1, len(stages)),
            default_input_shape=getattr(backbone, "default_input_shape", None),
        )
        self.backbone = backbone
        self.widths = tuple(checked)

    def forward(self, x: Tensor, policy: ExitPolicy | None = None) -> DynamicOutput:
        out = super().forward(x, policy)
        if policy is not None:
            out.decisions["width"] = torch.tensor(self.widths, device=x.device)[out.decisions["exit_index"]]
        return out

    def _backbone(self, name: str):
        """The backbone's attribute `name` for the classifier API; a slimmable chain of the
        user's (`adapt.make_slimmable`) has none of them: a clear error instead."""
        found = getattr(self.backbone, name, None)
        if found is None:
            raise ConfigError(f"width cascade: its backbone {type(self.backbone).__name__} has no {name}; the "
                              "classifier API needs a slimmable ResNet backbone")
        return found

    def forward_features(self, x: Tensor) -> Tensor:
        """The backbone's features at the widest cascade width, `(B, channels, H', W')`."""
        return self._backbone("forward_features")(x, self.widths[-1])

    def forward_head(self, features: Tensor) -> Tensor:
        """The backbone's head on features of any width: `(B, num_classes)`."""
        return self._backbone("forward_head")(features)

    @property
    def classifier_paths(self) -> tuple[str, ...]:
        """The backbone's classifier (shared by every width)."""
        return tuple(f"backbone.{path}" for path in self._backbone("classifier_paths"))

    @property
    def num_features(self) -> int:
        """Feature channels entering the classifier at the widest cascade width."""
        return int(self._backbone("channels")(self.widths[-1]))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier with `num_classes` outputs for every width."""
        check_num_classes("width cascade", num_classes)
        self._backbone("reset_classifier")(num_classes)
        for stage in self.stages:
            stage.num_classes = num_classes
        self.classifier_changed()


@register_model
def width_cascade(
    *,
    backbone: str = "slimmable_resnet_cifar",
    backbone_args: Mapping | None = None,
    widths: Sequence[float] | None = None,
    num_classes: int = 10,
    in_chans: int = 3,
    device=None,
    dtype=None,
) -> WidthCascade:
    """A cascade over the widths of a registered slimmable network; see `WidthCascade`.

    Args:
        backbone: a registered slimmable model's name.
        backbone_args: its extra keyword arguments; `{"pretrained": "cifar10"}` loads its
            shipped weights (the cascade itself needs no weights of its own).
        widths: the widths run, ascending (`None`: every configured width of the backbone).

    Default (slimmable ResNet-20, widths 0.25 / 0.5 / 0.75 / 1.0) on 3x32x32, 10 classes,
    cumulative FLOPs per exit: 5,267,776 / 25,895,872 / 71,976,832 / 153,603,200 (a sample
    that goes on pays for every width it ran). `widths=(0.5, 1.0)`: 20,628,096 / 102,254,464.
    """
    extra = dict(backbone_args or {})
    taken = {"num_classes", "in_chans", "device", "dtype"} & set(extra)
    if taken:
        raise ConfigError(f"model 'width_cascade': pass {sorted(taken)} to width_cascade itself, not in backbone_args")
    model = create_model(backbone, num_classes=num_classes, in_chans=in_chans, device=device, dtype=dtype, **extra)
    return WidthCascade(model, widths)
