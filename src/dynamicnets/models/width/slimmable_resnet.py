"""Slimmable ResNets: one set of weights, run at any configured width by slicing channels.

One definition covers the CIFAR layout (3x3 stem, basic blocks, three stages; He et al.
2016, sec. 4.2) and the ImageNet layout (7x7 stride-2 stem + max-pool, four stages of
bottleneck blocks with the stride on the 3x3 conv, "ResNet v1.5"). `width_mult` scales
every channel count at construction (a static `width_mult=0.25` network is DS-Net's
"ideal" 0.25x ResNet-50); `widths` are the fractions of that network runnable at
inference (`forward(x, width=0.25)`), where every conv runs a weight *view*.

Training (`model.train()`, no `width` given) follows the sandwich rule: the batch runs
at every configured width (switchable norm), or at the smallest, the largest and
`num_random_widths` random widths (universal norm). `exit_logits` then holds one
`(B, C)` tensor per width, narrowest first, `logits` is the widest, and `flops` sums the
widths executed. `inplace_distill > 0` adds in-place distillation (US-Nets): the
narrower widths match the widest's detached softmax, as aux loss `"inplace_distill"`.

Figures (FLOPs = 2 per multiply-add, per sample; widths 1.0 / 0.75 / 0.5 / 0.25):

| model, input, classes              | params, all widths (width 1.0) |
|------------------------------------|--------------------------------|
| slimmable_resnet_cifar, 3x32x32, 10 | 274,826 (272,474)             |
| slimmable_resnet50, 3x224x224, 1000 | 25,636,712 (25,557,032)       |

| model                  | FLOPs at width 1.0 / 0.75 / 0.5 / 0.25                       |
|------------------------|--------------------------------------------------------------|
| slimmable_resnet_cifar | 81,626,368 / 46,080,960 / 20,628,096 / 5,267,776             |
| slimmable_resnet50     | 8,178,368,512 / 4,645,355,520 / 2,104,623,104 / 556,171,264  |

Width 1.0 has exactly the parameters and FLOPs of the static `resnet20` (10 classes) and
of the standard ResNet-50 (25,557,032 params, 4.09 G multiply-adds); the rest are the
per-width BatchNorms. The static 0.25x ResNet-50 (`width_mult=0.25`) has 1,993,976
params and the same 556,171,264 FLOPs as width 0.25. `tests/width` recomputes these.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...execution import Execution, parse_execution
from ...inference.width_policy import WidthPolicy
from ...layers.slimmable import EXECUTIONS, SlimmableLinear, WidthLadder, channels_at, check_width
from ...outputs import DynamicOutput
from ...flops import conv_out_size
from .._api import ClassifierApi, check_num_classes
from .._registry import register_model
from ..static._checks import check_input_shape, require_positive
from .conv_norm_act import NORMS, SlimmableConvNormAct

BLOCKS = ("basic", "bottleneck")
STEMS = ("cifar", "imagenet")


class SlimmableBasicBlock(nn.Module):
    """`relu(conv2(conv1(x)) + shortcut(x))` with two 3x3 slimmable conv-norm layers.

    The shortcut is a 1x1 conv + norm where the stride or the channel count changes,
    else identity. Shapes: `(B, c_in, H, W) -> (B, channels_at(out_chans, width), H/s, W/s)`.
    """

    expansion = 1

    def __init__(
        self, in_chans: int, mid_chans: int, stride: int, *, widths, norm, device=None, dtype=None
    ) -> None:
        super().__init__()
        kw = {"widths": widths, "norm": norm, "device": device, "dtype": dtype}
        out_chans = mid_chans * self.expansion
        self.conv1 = SlimmableConvNormAct(in_chans, mid_chans, 3, stride, **kw)
        self.conv2 = SlimmableConvNormAct(mid_chans, out_chans, 3, 1, act=False, **kw)
        self.shortcut = _shortcut(in_chans, out_chans, stride, kw)

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:
        y = self.conv2(self.conv1(x, width), width)
        s = x if self.shortcut is None else self.shortcut(x, width)
        return F.relu(y + s, inplace=True)

    def flops_and_shape(self, in_shape, width=None, execution=None):
        """Per-sample FLOPs on a `(c, H, W)` input and the output shape."""
        return _chain_flops([self.conv1, self.conv2], self.shortcut, in_shape, width, execution)


class SlimmableBottleneck(nn.Module):
    """`relu(conv3(conv2(conv1(x))) + shortcut(x))`: 1x1 reduce, 3x3 (stride here), 1x1 expand x4.

    Shapes: `(B, c_in, H, W) -> (B, channels_at(4 * mid_chans, width), H/s, W/s)`.
    """

    expansion = 4

    def __init__(
        self, in_chans: int, mid_chans: int, stride: int, *, widths, norm, device=None, dtype=None
    ) -> None:
        super().__init__()
        kw = {"widths": widths, "norm": norm, "device": device, "dtype": dtype}
        out_chans = mid_chans * self.expansion
        self.conv1 = SlimmableConvNormAct(in_chans, mid_chans, 1, 1, **kw)
        self.conv2 = SlimmableConvNormAct(mid_chans, mid_chans, 3, stride, **kw)
        self.conv3 = SlimmableConvNormAct(mid_chans, out_chans, 1, 1, act=False, **kw)
        self.shortcut = _shortcut(in_chans, out_chans, stride, kw)

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:
        y = self.conv3(self.conv2(self.conv1(x, width), width), width)
        s = x if self.shortcut is None else self.shortcut(x, width)
        return F.relu(y + s, inplace=True)

    def flops_and_shape(self, in_shape, width=None, execution=None):
        """Per-sample FLOPs on a `(c, H, W)` input and the output shape."""
        layers = [self.conv1, self.conv2, self.conv3]
        return _chain_flops(layers, self.shortcut, in_shape, width, execution)


def _shortcut(in_chans: int, out_chans: int, stride: int, kw: dict) -> SlimmableConvNormAct | None:
    if stride == 1 and in_chans == out_chans:
        return None
    return SlimmableConvNormAct(in_chans, out_chans, 1, stride, act=False, **kw)


def _chain_flops(layers, shortcut, in_shape, width, execution):
    total, shape = 0, in_shape
    for layer in layers:
        flops, shape = layer.flops_and_shape(shape, width, execution)
        total += flops
    if shortcut is not None:
        total += shortcut.flops_and_shape(in_shape, width, execution)[0]
    return total, shape


class SlimmableResNet(WidthLadder, ClassifierApi, nn.Module):
    """A ResNet whose every conv is slimmable; `forward(x, width)` runs one width compactly.

    Args:
        block: `"basic"` or `"bottleneck"`.
        layers: blocks per stage (e.g. `(3, 3, 3)` for ResNet-20, `(3, 4, 6, 3)` for ResNet-50).
        num_classes, in_chans: classifier outputs, input channels.
        stem: `"cifar"` (3x3 conv, stride 1) or `"imagenet"` (7x7 stride 2 + 3x3 max-pool).
        base_width: channels of the stem and of the first stage's blocks (16 CIFAR, 64 ImageNet).
        width_mult: scales every channel count at construction (the widest network).
        widths: width fractions runnable at inference; must include 1.0. With the
            universal norm every width in `[min(widths), 1.0]` runs.
        norm: `"switchable"` (one BN per configured width) or `"universal"` (one sliced BN).
        num_random_widths: random widths per training step besides the smallest and
            largest (universal norm only).
        inplace_distill: weight of the in-place distillation aux loss (0 = off).

    Attributes:
        stem: `SlimmableConvNormAct` (the image channels are never sliced).
        stages: `nn.ModuleList` of `nn.ModuleList` of blocks, each `block(x, width)`.
        head: `SlimmableLinear(features, num_classes)` after global average pooling.
        widths: the configured widths, ascending; `default_width`: the width run in eval
            when none is given (1.0; change with `set_default_width`).
        execution: `"compact"`, `"masked"` or `"indexed"` (`layers.slimmable.set_execution`).
        default_input_shape: `(in_chans, 32, 32)` (CIFAR stem) or `(in_chans, 224, 224)`.
        num_features: feature channels at the full width (classifier API:
            `dynamicnets.models.ClassifierApi`; `forward_features(x, width=None)` runs one
            width, `forward_head` pools and classifies features of any width).

    Shapes:
        `forward(x)`: `(B, in_chans, H, W)` -> `DynamicOutput` (`logits (B, num_classes)`,
        `flops (B,)`, `decisions["width"] (B,)` when one width ran, with a policy `decisions["width_capped"] (B,)`).
    """

    classifier_paths = ("head",)

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        stem: str = "imagenet",
        base_width: int = 64,
        width_mult: float = 1.0,
        widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        norm: str = "switchable",
        num_random_widths: int = 2,
        inplace_distill: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.name = f"slimmable_resnet ({block}, {stem})"
        require_positive(
            self.name, num_classes=num_classes, in_chans=in_chans, base_width=base_width
        )
        if block not in BLOCKS or stem not in STEMS or norm not in NORMS:
            raise ConfigError(
                f"{self.name}: block must be one of {BLOCKS}, stem one of {STEMS}, norm one of "
                f"{NORMS}; got block={block!r}, stem={stem!r}, norm={norm!r}"
            )
        if not layers or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ConfigError(f"{self.name}: layers must be positive ints, got {list(layers)}")
        if not isinstance(width_mult, (int, float)) or width_mult <= 0:
            raise ConfigError(f"{self.name}: width_mult must be > 0, got {width_mult!r}")
        if not isinstance(widths, (list, tuple)) or not widths:
            raise ConfigError(f"{self.name}: widths must be a non-empty list of width fractions in (0, 1] "
                              f"including 1.0, e.g. [0.25, 0.5, 1.0]; got {widths!r}")
        widths = sorted({check_width(w, self.name) for w in widths})
        if widths[-1] != 1.0:
            raise ConfigError(f"{self.name}: widths must include 1.0, got {widths}")
        if inplace_distill < 0 or num_random_widths < 0:
            raise ConfigError(f"{self.name}: inplace_distill and num_random_widths must be >= 0")
        self.widths = tuple(widths)
        self.norm = norm
        self.num_random_widths = num_random_widths
        self.inplace_distill = float(inplace_distill)
        self.in_chans = in_chans
        self.default_width = 1.0
        self.execution = Execution.COMPACT
        self.stem_kind = stem
        self.default_input_shape = (in_chans, 32, 32) if stem == "cifar" else (in_chans, 224, 224)

        def scaled(c: int) -> int:
            return max(1, int(c * width_mult + 0.5))

        kw = {"widths": self.widths, "norm": norm, "device": device, "dtype": dtype}
        block_cls = SlimmableBasicBlock if block == "basic" else SlimmableBottleneck
        stem_chans = scaled(base_width)
        kernel, stride = (3, 1) if stem == "cifar" else (7, 2)
        self.stem = SlimmableConvNormAct(in_chans, stem_chans, kernel, stride, slim_in=False, **kw)
        self.stages = nn.ModuleList()
        chans = stem_chans
        for i, num_blocks in enumerate(layers):
            mid = scaled(base_width * 2**i)
            blocks = nn.ModuleList()
            for j in range(num_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block_cls(chans, mid, stride, **kw))
                chans = mid * block_cls.expansion
            self.stages.append(blocks)
        self.head = SlimmableLinear(chans, num_classes, slim_out=False, device=device, dtype=dtype)

    @property
    def width_owner(self) -> str:
        return self.name

    # -- forward --------------------------------------------------------------------------

    def forward_features(self, x: Tensor, width: float | None = None) -> Tensor:
        """`(B, in_chans, H, W) -> (B, channels_at(features, width), H', W')`."""
        x = self.stem(x, width)
        if self.stem_kind == "imagenet":
            x = F.max_pool2d(x, 3, 2, 1)
        for blocks in self.stages:
            for block in blocks:
                x = block(x, width)
        return x

    def forward_head(self, features: Tensor) -> Tensor:
        """`(B, channels_at(features, width), H', W') -> (B, num_classes)`: pool, then the
        classifier on the features of that width."""
        return self.head(features.mean(dim=(2, 3)))

    def forward_logits(self, x: Tensor, width: float | None = None) -> Tensor:
        """Logits `(B, num_classes)` of one width (`None` = widest), no checks, no FLOPs."""
        return self.forward_head(self.forward_features(x, width))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier (`SlimmableLinear`, every class at every width) with
        `num_classes` outputs, in the old one's execution, device and dtype."""
        check_num_classes(self.name, num_classes)
        old = self.head
        self.head = SlimmableLinear(
            old.in_features, num_classes, old.bias is not None, slim_in=old.slim_in, slim_out=old.slim_out,
            device=old.weight.device, dtype=old.weight.dtype,
        )
        self.head.execution = old.execution

    def forward(
        self, x: Tensor, width: float | None = None, *, widths: Sequence[float] | None = None,
        policy: WidthPolicy | None = None,
    ) -> DynamicOutput:
        """Run one `width`, or several `widths` (sandwich); see the class doc for the default.

        `policy` (a `WidthPolicy`) caps a one-width run: the width runs if its per-sample
        FLOPs and fraction fit the caps, else the widest configured width below it that
        fits (`decisions["width"]` says which ran)."""
        if width is not None and widths is not None:
            raise ConfigError(f"{self.name}: give width or widths, not both")
        if widths is None:
            if width is None and self.training:
                widths = self.training_widths()
            else:
                widths = [self.default_width if width is None else width]
        asked = [self.check_width(w) for w in widths]
        widths = self.capped_widths(asked, tuple(x.shape[1:]), policy)
        b = x.shape[0]
        all_logits = [self.forward_logits(x, w) for w in widths]
        flops = sum(self.flops(x.shape[1:], w) for w in widths)
        out = DynamicOutput(
            logits=all_logits[-1],
            exit_logits=all_logits,
            flops=torch.full((b,), float(flops), dtype=torch.float64, device=x.device),
        )
        out.decisions.update(self.width_decisions(asked, widths, b, x.device, policy))
        if len(widths) > 1 and self.inplace_distill > 0:
            out.aux_losses["inplace_distill"] = self.inplace_distill * _distill(
                all_logits[:-1], all_logits[-1]
            )
        return out

    # -- costs ----------------------------------------------------------------------------

    def flops(
        self, input_shape: tuple[int, ...], width: float | None = None, execution: str | None = None
    ) -> int:
        """Per-sample FLOPs of one width on a `(in_chans, H, W)` input (`FlopCounterMode`'s count).

        `execution` defaults to the model's; `"masked"` costs the full network whatever
        the width, because that is what runs.
        """
        execution = self.execution if execution is None else parse_execution(execution, EXECUTIONS)
        shape = check_input_shape(self.name, input_shape, self.in_chans, spatial_dims=2)
        total, shape = self.stem.flops_and_shape(shape, width, execution)
        if self.stem_kind == "imagenet":
            shape = (shape[0], conv_out_size(shape[1], 3, 2, 1), conv_out_size(shape[2], 3, 2, 1))
        for blocks in self.stages:
            for block in blocks:
                flops, shape = block.flops_and_shape(shape, width, execution)
                total += flops
        return total + self.head.flops(shape[0], None, execution)

    def channels(self, width: float | None = None) -> int:
        """Feature channels entering the classifier at `width`."""
        full = self.head.in_features
        return full if width is None else channels_at(full, width)


def _distill(students: list[Tensor], teacher: Tensor) -> Tensor:
    """Mean over students of `KL(softmax(teacher) || softmax(student))`, teacher detached."""
    target = F.log_softmax(teacher.detach(), dim=-1)
    losses = [
        F.kl_div(F.log_softmax(s, dim=-1), target, reduction="batchmean", log_target=True)
        for s in students
    ]
    return torch.stack(losses).mean()


CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


@register_model
def slimmable_resnet_cifar(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 20,
    base_width: int = 16,
    widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    norm: str = "switchable",
    num_random_widths: int = 2,
    inplace_distill: float = 0.0,
    device=None,
    dtype=None,
) -> SlimmableResNet:
    """Slimmable CIFAR ResNet (6n+2, basic blocks, option-B shortcuts); see `SlimmableResNet`.

    Depth 20, 3x32x32, 10 classes: 274,826 params (4 switchable BNs per conv), FLOPs
    81,626,368 at width 1.0 (= `resnet20`) and 5,267,776 at width 0.25.
    """
    if depth not in CIFAR_DEPTHS:
        raise ConfigError(
            f"model 'slimmable_resnet_cifar': depth must be one of {sorted(CIFAR_DEPTHS)}, "
            f"got {depth!r}"
        )
    n = CIFAR_DEPTHS[depth]
    return SlimmableResNet(
        "basic", (n, n, n), num_classes, in_chans, stem="cifar", base_width=base_width,
        widths=widths, norm=norm, num_random_widths=num_random_widths,
        inplace_distill=inplace_distill, device=device, dtype=dtype,
    )


def slimmable_resnet50(
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    width_mult: float = 1.0,
    widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    norm: str = "switchable",
    num_random_widths: int = 2,
    inplace_distill: float = 0.0,
    device=None,
    dtype=None,
) -> SlimmableResNet:
    """Slimmable ResNet-50 in the ImageNet layout (bottlenecks 3-4-6-3); see `SlimmableResNet`.

    `width_mult=0.25, widths=(1.0,)` is the static 0.25x ResNet-50 (DS-Net's "ideal").
    Not registered: at 3x224x224 the registry-wide contract tests would spend about a
    minute on it on two CPU cores; `tests/width` checks its costs on small inputs.
    3x224x224, 1000 classes, width_mult 1.0: 8,178,368,512 FLOPs at width 1.0,
    556,171,264 at width 0.25.
    """
    return SlimmableResNet(
        "bottleneck", (3, 4, 6, 3), num_classes, in_chans, stem="imagenet", base_width=64,
        width_mult=width_mult, widths=widths, norm=norm, num_random_widths=num_random_widths,
        inplace_distill=inplace_distill, device=device, dtype=dtype,
    )
