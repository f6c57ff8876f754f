"""Make a user's own plain conv net slimmable: one set of weights, run at several widths.

`make_slimmable(model, input_shape=..., widths=(0.25, 0.5, 0.75, 1.0))` turns a chain of
layers, an `nn.Sequential` (nested ones are flattened) of

- `nn.Conv2d` (`groups=1` or depthwise, `padding_mode="zeros"`), `nn.BatchNorm2d`,
- activations, dropout, pooling (`MaxPool2d`, `AvgPool2d`, adaptive pools), `nn.Flatten`,
- `nn.Linear` (reading pooled features: `(C,)`, or `(C, 1, 1)` flattened),

into a `SlimmableChain`: every conv and linear layer becomes a `SlimmableConv2d` /
`SlimmableLinear` with the original weights (width 1.0 computes exactly the original
network), every `BatchNorm2d` a `SwitchableBatchNorm2d` (one per width, each starting
from the original statistics) or, with `norm="universal"`, one sliced
`SlimmableBatchNorm2d` (any width; recalibrate with `layers.calibrate_batchnorm`). The
image channels and the classes are never sliced.

Where the structure does not allow it, `make_slimmable` says so, naming the module:

- a module with its own forward code (a residual block, a concatenation, an attention
  layer): the channel counts its code combines (e.g. `x + f(x)`) cannot be sliced
  consistently from outside, so only chains of the layers above are accepted;
- a grouped convolution (`1 < groups < channels`): a channel prefix cuts groups apart;
- a linear layer reading a flattened feature map with spatial extent: a channel prefix
  is not a prefix of its input features (pool to `1x1` first).

Execution (`layers.slimmable.set_execution(chain, ...)`): `"compact"` (default) runs
weight slices; `"masked"` runs the full layers and zeroes the channels beyond the width
(static shapes, the same logits); `"indexed"` copies the weights (a baseline).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..execution import parse_execution
from ..layers.slimmable import EXECUTIONS, SlimmableConv2d, SlimmableLinear, WidthLadder, check_width
from ..layers.switchable_norm import SlimmableBatchNorm2d, SwitchableBatchNorm2d
from ..flops import flops_and_shape
from ..inference.width_policy import WidthPolicy
from ..outputs import DynamicOutput, constant_flops
from .convs import numeric_padding

NORMS = ("switchable", "universal")
_PASSIVE = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.Sigmoid, nn.Tanh,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Flatten,
)
_SLIMMABLE = (SlimmableConv2d, SlimmableLinear, SwitchableBatchNorm2d, SlimmableBatchNorm2d)
_SUPPORTED = "nn.Sequential chains of Conv2d, BatchNorm2d, activations, dropout, pooling, Flatten and Linear"


class SlimmableChain(WidthLadder, nn.Module):
    """A chain of slimmable layers; `forward(x, width)` runs one width, or several in training.

    Built by `make_slimmable`. Attributes: `layers` (`nn.Sequential`), `widths` (ascending,
    with 1.0), `norm`, `default_width` (run in eval when no width is given), `in_chans`,
    `default_input_shape`.

    Shapes:
        `forward(x (B, *input_shape), width=None, *, widths=None) -> DynamicOutput`:
        one width (`width`, or `default_width` in eval) gives `logits (B, C)`,
        `decisions["width"] (B,)` and `flops (B,)` of that width; in training without a
        width, the sandwich rule (every configured width, switchable norm; the smallest,
        the widest and `num_random_widths` random ones, universal norm) gives one
        `exit_logits` tensor per width, narrowest first, `logits` the widest and `flops`
        their sum (train with `training.dynamic_loss(..., distill_weight=...)` for
        in-place distillation from the widest).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        widths: Sequence[float],
        *,
        norm: str,
        input_shape: Sequence[int],
        num_random_widths: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.widths = tuple(sorted(widths))
        self.norm = norm
        self.num_random_widths = int(num_random_widths)
        self.default_width = 1.0
        self.width_owner = "SlimmableChain"
        self.universal_hint = "make_slimmable(..., norm='universal') runs any width"
        self.default_input_shape = tuple(int(s) for s in input_shape)
        self.in_chans = self.default_input_shape[0]

    def get_classifier(self) -> nn.Linear:
        """The chain's last layer, the classifier (its classes are never sliced)."""
        last = self.layers[-1]
        if not isinstance(last, SlimmableLinear):
            raise ConfigError(f"SlimmableChain: its last layer is a {type(last).__name__}, not a linear classifier")
        return last

    def forward_logits(self, x: Tensor, width: float | None = None) -> Tensor:
        """Logits `(B, C)` at one width (`None` = widest), no checks, no FLOPs."""
        for layer in self.layers:
            x = layer(x, width) if isinstance(layer, _SLIMMABLE) else layer(x)
        return x

    def forward(self, x: Tensor, width: float | None = None, *, widths: Sequence[float] | None = None,
                policy: WidthPolicy | None = None) -> DynamicOutput:
        """Run one width or several (see the class docstring); `policy` (a `WidthPolicy`)
        caps a one-width run at the widest width whose per-sample FLOPs fit."""
        if width is not None and widths is not None:
            raise ConfigError("SlimmableChain: give width or widths, not both")
        if widths is None:
            widths = self.training_widths() if width is None and self.training else [
                self.default_width if width is None else width]
        shape = tuple(x.shape[1:])
        asked = [self.check_width(w) for w in widths]
        widths = self.capped_widths(asked, shape, policy)
        all_logits = [self.forward_logits(x, w) for w in widths]
        out = DynamicOutput(
            logits=all_logits[-1],
            exit_logits=all_logits,
            flops=constant_flops(sum(self.flops(shape, w) for w in widths), x.shape[0], x.device),
        )
        out.decisions.update(self.width_decisions(asked, widths, x.shape[0], x.device, policy))
        return out

    def flops(self, input_shape: Sequence[int], width: float | None = None, execution: str | None = None) -> int:
        """Per-sample FLOPs of one width on an `input_shape` input, as `FlopCounterMode` counts.

        `execution` defaults to the layers'; `"masked"` costs the full chain whatever the width.
        """
        shape = tuple(int(s) for s in input_shape)
        total = 0
        for layer in self.layers:
            if isinstance(layer, SlimmableConv2d):
                flops, shape = layer.flops_and_shape(shape, width, execution)
            elif isinstance(layer, SlimmableLinear):
                mode = layer.execution if execution is None else parse_execution(execution, EXECUTIONS)
                flops = math.prod(shape[:-1]) * layer.flops(shape[-1], width, mode)
                out = layer._max_out if mode == "masked" else layer.out_channels_at(width)
                shape = shape[:-1] + (out,)
            elif isinstance(layer, (SwitchableBatchNorm2d, SlimmableBatchNorm2d)):
                flops = 0
            else:
                flops, shape = flops_and_shape(layer, shape)
            total += flops
        return total


def make_slimmable(
    model: nn.Module,
    *,
    input_shape: Sequence[int],
    widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    norm: str = "switchable",
    num_random_widths: int = 2,
) -> SlimmableChain:
    """A slimmable copy of the plain conv net `model` (see the module docstring).

    Args:
        model: an `nn.Sequential` (nested ones allowed) of the supported layers, ending in
            the classifier; not modified (the chain gets copies of its weights).
        input_shape: per-sample input shape, e.g. `(3, 32, 32)`.
        widths: width fractions in `(0, 1]` to run; must include 1.0.
        norm: `"switchable"` (one BatchNorm per width) or `"universal"` (one sliced
            BatchNorm, any width in `[min(widths), 1]`).
        num_random_widths: random widths per training step besides the smallest and widest
            (universal norm only).

    Returns:
        `SlimmableChain`; at width 1.0 its logits are `model`'s.

    Raises:
        ConfigError: a module the chain cannot slice, named by its path, with the reason;
            bad widths or norm.
    """
    if norm not in NORMS:
        raise ConfigError(f"make_slimmable: norm must be one of {NORMS}, got {norm!r}")
    widths = sorted({check_width(w, "make_slimmable") for w in widths})
    if not widths or widths[-1] != 1.0:
        raise ConfigError(f"make_slimmable: widths must include 1.0, got {widths}")
    layers = _flatten_chain(model, "")
    weighted = [i for i, (_, m) in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not weighted:
        raise ConfigError("make_slimmable: the model has no Conv2d or Linear layer to slim")
    first, last = weighted[0], weighted[-1]
    shape: tuple = tuple(int(s) for s in input_shape)
    converted, spread = [], None  # spread: the per-sample shape a Flatten spread over features
    for i, (path, module) in enumerate(layers):
        if isinstance(module, nn.Linear) and spread is not None:
            raise ConfigError(
                f"make_slimmable: Linear {path!r} reads a flattened feature map of per-sample shape {spread}: "
                f"a channel prefix is not a prefix of its input features; pool to 1x1 before flattening"
            )
        converted.append(_convert(path, module, widths, norm, slim_in=i != first, slim_out=i != last))
        if isinstance(module, nn.Flatten) and len(shape) > 1 and math.prod(shape[1:]) > 1:
            spread = shape
        try:
            shape = flops_and_shape(module, shape)[1]
        except (RuntimeError, ValueError) as error:
            raise ConfigError(
                f"make_slimmable: module {path!r} ({type(module).__name__}) cannot take per-sample input "
                f"{shape}: {str(error).splitlines()[0]}"
            ) from None
    return SlimmableChain(converted, widths, norm=norm, input_shape=input_shape, num_random_widths=num_random_widths)


def _flatten_chain(module: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    if type(module) is nn.Sequential:
        out = []
        for name, child in module.named_children():
            out += _flatten_chain(child, f"{path}.{name}" if path else name)
        return out
    if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d) + _PASSIVE) and type(module).__module__.startswith("torch.nn"):
        return [(path, module)]
    name = repr(path) if path else "the model"
    if type(module).__module__.startswith("torch.nn"):  # a torch layer the chain has no sliced version of
        raise ConfigError(f"make_slimmable: module {name} ({type(module).__name__}) has no slimmable version "
                          f"here; supported: {_SUPPORTED}")
    raise ConfigError(
        f"make_slimmable: module {name} ({type(module).__name__}) is not a chain layer: its own forward code "
        f"(a residual add, a concatenation, ...) combines channel counts that cannot be sliced consistently "
        f"from outside; supported: {_SUPPORTED}"
    )


def _convert(path, module, widths, norm, *, slim_in, slim_out) -> nn.Module:
    factory = {"device": None, "dtype": None}
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor):
        factory = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(module, nn.Conv2d):
        return _convert_conv(path, module, slim_in, slim_out, factory)
    if isinstance(module, nn.Linear):
        layer = SlimmableLinear(module.in_features, module.out_features, module.bias is not None,
                                slim_in=slim_in, slim_out=slim_out, **factory)
        _copy(layer, module)
        return layer
    if isinstance(module, nn.BatchNorm2d):
        return _convert_norm(path, module, widths, norm, factory)
    return module


def _convert_conv(path, conv, slim_in, slim_out, factory) -> SlimmableConv2d:
    if conv.padding_mode != "zeros":
        raise ConfigError(f"make_slimmable: conv {path!r} has padding_mode={conv.padding_mode!r}; only 'zeros' is supported")
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if conv.groups != 1 and not depthwise:
        raise ConfigError(
            f"make_slimmable: conv {path!r} has groups={conv.groups}: a channel prefix of a grouped conv "
            f"does not keep whole groups; only groups=1 and depthwise convs can be slimmed"
        )
    if depthwise and not (slim_in and slim_out):
        raise ConfigError(
            f"make_slimmable: depthwise conv {path!r} is the first or last weighted layer; its channels "
            f"must follow the width on both sides"
        )
    layer = SlimmableConv2d(
        conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
        numeric_padding(conv, f"make_slimmable: conv {path!r}"), tuple(conv.dilation), conv.groups,
        conv.bias is not None, slim_in=slim_in, slim_out=slim_out, **factory,
    )
    _copy(layer, conv)
    return layer


def _convert_norm(path, bn, widths, norm, factory) -> nn.Module:
    if not (bn.affine and bn.track_running_stats):
        raise ConfigError(f"make_slimmable: BatchNorm2d {path!r} must have affine=True and track_running_stats=True")
    kwargs = {"eps": bn.eps, "momentum": bn.momentum, **factory}
    if norm == "universal":
        layer = SlimmableBatchNorm2d(bn.num_features, **kwargs)
        layer.load_state_dict(bn.state_dict())
        return layer
    layer = SwitchableBatchNorm2d(bn.num_features, widths, **kwargs)
    with torch.no_grad():
        for sub in layer.bns:
            c = sub.num_features
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(sub, name).copy_(getattr(bn, name)[:c])
            sub.num_batches_tracked.copy_(bn.num_batches_tracked)
    return layer


def _copy(layer: nn.Module, original: nn.Module) -> None:
    with torch.no_grad():
        layer.weight.copy_(original.weight)
        if original.bias is not None:
            layer.bias.copy_(original.bias)
