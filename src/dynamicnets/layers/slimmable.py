"""Slimmable convolution and linear layers: run a prefix of the channels as a weight *view*.

A slimmable layer holds the weights of its widest configuration. Running it at width
`w` (a fraction of the widest) uses the first `channels_at(out, w)` output channels and
as many input channels as the input tensor carries, by slicing `weight[:out, :in]` - a
view of the parameter, so no weight is copied and gradients reach the full parameter
(Yu et al., "Slimmable Neural Networks", 2019; DS-Net, Li et al. 2021).

Three executions of the same width, chosen with `set_execution` (default `"compact"`):

- `"compact"`: the compact path above (weight views; optionally cached contiguous copies
  in eval mode, see `build_slice_cache`).
- `"masked"`: run the full layer, then zero the channels beyond the width. Shapes stay
  static (what training with per-sample decisions needs); it saves nothing, and the
  FLOPs reported for it are those of the full layer.
- `"indexed"`: gather the active weights with `index_select` on every call - DS-Net's
  "indexing" baseline, kept to measure what copying weights costs.

The input width is never an argument: it is read from `x.shape[1]` (`x.shape[-1]` for
linear layers), so any layer chain stays consistent by construction.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..execution import Execution, parse_execution
from ..flops import conv_out_size

if TYPE_CHECKING:  # the policy lives with inference; the ladder only calls it
    from ..inference.width_policy import WidthPolicy

EXECUTIONS = (Execution.COMPACT, Execution.MASKED, Execution.INDEXED)


def channels_at(channels: int, width: float) -> int:
    """Channels of a layer with `channels` at its widest, run at fraction `width`.

    `round(channels * width)` (halves rounded up), clamped to `[1, channels]`.
    """
    return max(1, min(channels, int(channels * width + 0.5)))


def check_width(width: float, owner: str = "slimmable layer") -> float:
    """Validate a width fraction in `(0, 1]`; raises `ConfigError` naming `owner`."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0.0 < width <= 1.0:
        raise ConfigError(f"{owner}: width must be a number in (0, 1], got {width!r}")
    return float(width)


class WidthLadder:
    """Mixin: the widths a slimmable model runs, and the sandwich rule that trains them.

    The host sets `widths` (ascending fractions), `norm` (`"switchable"`: one norm per
    configured width, only those run; `"universal"`: any width from the smallest up),
    `num_random_widths`, `default_width`, and names itself in `width_owner`;
    `universal_hint` tells a user how to get a model that runs any width.
    """

    widths: tuple[float, ...]
    norm: str
    num_random_widths: int
    default_width: float
    width_owner: str
    universal_hint: str = "build with norm='universal' for any width"

    def check_width(self, width: float) -> float:
        """`width` if this model can run it (`ConfigError` otherwise)."""
        width = check_width(width, self.width_owner)
        if self.norm == "switchable" and width not in self.widths:
            raise ConfigError(
                f"{self.width_owner}: width {width} is not configured; configured widths: "
                f"{list(self.widths)} ({self.universal_hint})"
            )
        if width < self.widths[0]:
            raise ConfigError(
                f"{self.width_owner}: width {width} is below the smallest trained width {self.widths[0]}"
            )
        return width

    def set_default_width(self, width: float) -> None:
        """The width `forward` runs in eval mode when given none (not for use in forward)."""
        self.default_width = self.check_width(width)

    def capped_width(self, width: float, input_shape: Sequence[int], policy: WidthPolicy | None) -> float:
        """`width` clamped by `policy`'s compute cap: `width` itself when its per-sample
        cost on an `input_shape` input (the host's `flops(input_shape, width)`) and the
        width fit, else the widest configured width below it that fits (`policy=None`:
        `width`). Raises `ConfigError` naming the key when nothing fits."""
        if policy is None:
            return width
        candidates = sorted({w for w in self.widths if w < width} | {width})
        costs = [self.flops(tuple(input_shape), w) for w in candidates]
        return candidates[policy.widest_allowed(candidates, costs, self.width_owner)]

    def capped_widths(self, widths: list[float], input_shape: Sequence[int],
                      policy: WidthPolicy | None) -> list[float]:
        """The widths a forward runs, after `policy` (which bounds a one-width run only)."""
        if policy is None:
            return widths
        if len(widths) != 1:
            raise ConfigError(f"{self.width_owner}: a width policy caps a run at one width; this call runs "
                              f"{len(widths)} widths (the sandwich rule: pass width=... or call eval())")
        return [self.capped_width(widths[0], input_shape, policy)]

    @staticmethod
    def width_decisions(asked: list[float], ran: list[float], batch: int, device,
                        policy: WidthPolicy | None) -> dict[str, Tensor]:
        """A forward's `decisions` about width: when one width ran, `width (B,)` and, under a
        `policy`, `width_capped (B,)` bool (every sample ran the same width, so capped for
        all or for none); nothing for a sandwich-rule run of several widths."""
        if len(ran) != 1:
            return {}
        decisions = {"width": torch.full((batch,), ran[0], device=device)}
        if policy is not None:
            decisions["width_capped"] = torch.full((batch,), ran[0] != asked[0], device=device)
        return decisions

    def worst_case_flops(self, input_shape: Sequence[int], policy: WidthPolicy | None = None) -> float:
        """The most per-sample FLOPs a one-width run on an `input_shape` input can cost
        under `policy`, whatever width is asked for."""
        widest = 1.0 if policy is None or policy.max_width is None else policy.max_width
        if self.norm == "switchable":  # only the configured widths run
            widest = max([w for w in self.widths if w <= widest], default=self.widths[0])
        bound = float(self.flops(tuple(input_shape), self.capped_width(widest, input_shape, policy)))
        return bound if policy is None or policy.max_flops is None else min(bound, policy.max_flops)

    def training_widths(self) -> list[float]:
        """The widths of one sandwich-rule training step, ascending (random ones drawn now)."""
        if self.norm == "switchable":
            return list(self.widths)
        low = self.widths[0]
        drawn = (low + (1.0 - low) * torch.rand(self.num_random_widths)).tolist()
        return sorted([low, *drawn, 1.0])


def set_execution(module: nn.Module, execution: Execution | str) -> nn.Module:
    """Set `execution` (`"compact"`, `"masked"` or `"indexed"`) on every slimmable module in `module`.

    Returns `module` (for chaining). Not to be called inside `forward`.
    """
    execution = parse_execution(execution, EXECUTIONS)
    for m in module.modules():
        if hasattr(m, "execution"):
            m.execution = execution
    return module


def build_slice_cache(module: nn.Module, widths: Iterable[float]) -> nn.Module:
    """Store contiguous copies of each slimmable layer's weights at each of `widths`.

    Only eval-mode `"compact"` execution uses them; `train()`, `.to()` and any in-place
    weight update (optimizer step, `load_state_dict`) make them stale, and a stale or
    missing entry falls back to the weight view. Returns `module`.
    """
    widths = [check_width(w, "build_slice_cache") for w in widths]
    for m in module.modules():
        if isinstance(m, _SlicedWeight):
            for w in widths:
                m.cache_width(w)
    return module


def clear_slice_cache(module: nn.Module) -> nn.Module:
    """Drop every cached weight copy in `module`. Returns `module`."""
    for m in module.modules():
        if isinstance(m, _SlicedWeight):
            m.clear_cache()
    return module


def width_mask(channels: int, active: int, like: Tensor, ndim: int) -> Tensor:
    """`(1, channels, 1, ...)` 0/1 mask (`ndim` dims) with ones on the first `active` channels."""
    mask = (torch.arange(channels, device=like.device) < active).to(like.dtype)
    return mask.view(1, channels, *([1] * (ndim - 2)))


@dataclass(frozen=True)
class _CacheEntry:
    weight: Tensor
    bias: Tensor | None
    version: int
    data_ptr: int


class _SlicedWeight:
    """Mixin: weight/bias selection for `(out, in)` channel prefixes, with the eval cache.

    The host module defines `weight` `(out_max, in_max, ...)`, `bias` `(out_max,)` or
    None, `slim_in`, `slim_out`, `_max_in`, `_max_out`, `execution` and `_cache`.
    """

    weight: Tensor
    bias: Tensor | None
    _cache: dict

    def out_channels_at(self, width: float | None) -> int:
        if width is None:
            return self._max_out
        if not 0.0 < width <= 1.0:
            check_width(width, type(self).__name__)
        return channels_at(self._max_out, width) if self.slim_out else self._max_out

    def in_channels_at(self, width: float | None) -> int:
        if width is None or not self.slim_in:
            return self._max_in
        return channels_at(self._max_in, width)

    def _check_in(self, active_in: int) -> None:
        if active_in > self._max_in or (not self.slim_in and active_in != self._max_in):
            expect = f"at most {self._max_in}" if self.slim_in else f"exactly {self._max_in}"
            raise ConfigError(
                f"{type(self).__name__}: input has {active_in} channels, expected {expect}"
            )

    def _weight_in_dim(self, active_in: int) -> int:
        return active_in

    def sliced_parameters(self, out: int, active_in: int) -> tuple[Tensor, Tensor | None]:
        """The weight `(out, in, ...)` and bias `(out,)` for a channel prefix.

        The full parameters when the prefix is everything; a cached contiguous copy in
        eval mode when a fresh one exists; otherwise views `weight[:out, :in]`.
        """
        w_in = self._weight_in_dim(active_in)
        if out == self.weight.shape[0] and w_in == self.weight.shape[1]:
            return self.weight, self.bias
        if not self.training:
            entry = self._cache.get((out, w_in))
            if (
                entry is not None
                and entry.version == self.weight._version
                and entry.data_ptr == self.weight.data_ptr()
            ):
                return entry.weight, entry.bias
        bias = None if self.bias is None else self.bias[:out]
        return self.weight[:out, :w_in], bias

    def indexed_parameters(self, out: int, active_in: int) -> tuple[Tensor, Tensor | None]:
        """Weight and bias gathered with `index_select` (copies; the "indexing" baseline)."""
        device = self.weight.device
        idx_out = torch.arange(out, device=device)
        weight = self.weight.index_select(0, idx_out)
        w_in = self._weight_in_dim(active_in)
        if w_in != self.weight.shape[1]:
            weight = weight.index_select(1, torch.arange(w_in, device=device))
        bias = None if self.bias is None else self.bias.index_select(0, idx_out)
        return weight, bias

    def cache_width(self, width: float) -> None:
        """Cache dense copies (in the weight's own layout) of the prefixes used at `width`."""
        out = self.out_channels_at(width)
        w_in = self._weight_in_dim(self.in_channels_at(width))
        if out == self.weight.shape[0] and w_in == self.weight.shape[1]:
            return
        layout = torch.contiguous_format
        if self.weight.ndim == 4 and self.weight.is_contiguous(memory_format=torch.channels_last):
            layout = torch.channels_last  # keep the layout the model was converted to
        with torch.no_grad():
            weight = self.weight[:out, :w_in].clone(memory_format=layout)
            bias = None if self.bias is None else self.bias[:out].clone()
        self._cache[(out, w_in)] = _CacheEntry(
            weight, bias, self.weight._version, self.weight.data_ptr()
        )

    def clear_cache(self) -> None:
        self._cache.clear()

    def cached_widths(self) -> list[tuple[int, int]]:
        """The `(out, in)` channel prefixes currently cached."""
        return sorted(self._cache)


class SlimmableConv2d(_SlicedWeight, nn.Conv2d):
    """`nn.Conv2d` that can run any prefix of its output channels on any prefix of its inputs.

    Args:
        in_channels, out_channels: channels at the widest configuration.
        kernel_size, stride, padding, dilation, bias: as `nn.Conv2d` (numeric padding).
        groups: 1, or depthwise (`groups == in_channels == out_channels`, then the active
            input and output channels are the same prefix).
        slim_in: the input channel count may be smaller than `in_channels` (False for a
            stem that always sees the image channels).
        slim_out: the output channel count follows `width` (False for a fixed output).

    Attributes:
        execution: `"compact"` (default), `"masked"` or `"indexed"` (see the module doc).

    Shapes:
        `forward(x, width)`: `(B, c_in, H, W) -> (B, channels_at(out_channels, width), H', W')`
        with `c_in <= in_channels` (the active input prefix); `width=None` is the widest.
        In `"masked"` execution `c_in == in_channels` and the output keeps `out_channels`
        channels, those beyond the width being zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        slim_in: bool = True,
        slim_out: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        if isinstance(padding, str):
            raise ConfigError(f"SlimmableConv2d: padding must be numeric, got {padding!r}")
        self.depthwise = groups != 1
        if self.depthwise and not (groups == in_channels == out_channels and slim_in == slim_out):
            raise ConfigError(
                "SlimmableConv2d: groups must be 1 or depthwise (groups == in_channels == "
                f"out_channels, slim_in == slim_out), got groups={groups}, in={in_channels}, "
                f"out={out_channels}"
            )
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            device=device, dtype=dtype,
        )
        self.slim_in, self.slim_out = slim_in, slim_out
        self._max_in, self._max_out = in_channels, out_channels
        self.execution = Execution.COMPACT
        self._cache: dict[tuple[int, int], _CacheEntry] = {}

    def _weight_in_dim(self, active_in: int) -> int:
        return 1 if self.depthwise else active_in

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:
        if self.execution is Execution.MASKED:
            return self._forward_masked(x, width)
        active_in = x.shape[1]
        self._check_in(active_in)
        out = active_in if self.depthwise else self.out_channels_at(width)
        if self.execution is Execution.INDEXED:
            weight, bias = self.indexed_parameters(out, active_in)
        else:
            weight, bias = self.sliced_parameters(out, active_in)
        groups = out if self.depthwise else 1
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def _forward_masked(self, x: Tensor, width: float | None) -> Tensor:
        self._check_in(x.shape[1])
        if x.shape[1] != self._max_in:
            raise ConfigError(
                f"SlimmableConv2d in 'masked' execution needs all {self._max_in} input "
                f"channels (zeros beyond the width), got {x.shape[1]}"
            )
        y = F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
        out = self.out_channels_at(width)
        return y if out == self._max_out else y * width_mask(self._max_out, out, y, 4)

    def flops_and_shape(
        self,
        in_shape: tuple[int, int, int],
        width: float | None = None,
        execution: str | None = None,
    ) -> tuple[int, tuple[int, int, int]]:
        """Per-sample FLOPs on a `(c_in, H, W)` input and the `(c_out, H', W')` output shape.

        `execution` defaults to the layer's; `"masked"` costs (and outputs) the full layer.
        """
        execution = self.execution if execution is None else parse_execution(execution, EXECUTIONS)
        c_in, h, w = in_shape
        if execution is Execution.MASKED:
            c_in, out = self._max_in, self._max_out
        else:
            out = c_in if self.depthwise else self.out_channels_at(width)
        kh, kw = self.kernel_size
        oh = conv_out_size(h, kh, self.stride[0], self.padding[0], self.dilation[0])
        ow = conv_out_size(w, kw, self.stride[1], self.padding[1], self.dilation[1])
        per_in = 1 if self.depthwise else c_in
        return 2 * out * per_in * kh * kw * oh * ow, (out, oh, ow)

    def _apply(self, fn, recurse=True):
        self._cache.clear()
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        if mode:
            self._cache.clear()
        return super().train(mode)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", slim_in={self.slim_in}, slim_out={self.slim_out}"


class SlimmableLinear(_SlicedWeight, nn.Linear):
    """`nn.Linear` that can run any prefix of its outputs on any prefix of its input features.

    Args:
        in_features, out_features: sizes at the widest configuration.
        bias: as `nn.Linear`.
        slim_in, slim_out: whether the input / output size follows the width (a classifier
            has `slim_out=False`: it always produces every class).

    Shapes:
        `forward(x, width)`: `(*, f_in) -> (*, channels_at(out_features, width))` with
        `f_in <= in_features`. In `"masked"` execution `f_in == in_features` and the
        output keeps `out_features` features, those beyond the width being zero.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        slim_in: bool = True,
        slim_out: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.slim_in, self.slim_out = slim_in, slim_out
        self._max_in, self._max_out = in_features, out_features
        self.execution = Execution.COMPACT
        self._cache: dict[tuple[int, int], _CacheEntry] = {}

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:
        active_in = x.shape[-1]
        self._check_in(active_in)
        if self.execution is Execution.MASKED:
            if active_in != self._max_in:
                raise ConfigError(
                    f"SlimmableLinear in 'masked' execution needs all {self._max_in} input "
                    f"features (zeros beyond the width), got {active_in}"
                )
            y = F.linear(x, self.weight, self.bias)
            out = self.out_channels_at(width)
            if out == self._max_out:
                return y
            return y * (torch.arange(self._max_out, device=y.device) < out).to(y.dtype)
        out = self.out_channels_at(width)
        if self.execution is Execution.INDEXED:
            weight, bias = self.indexed_parameters(out, active_in)
        else:
            weight, bias = self.sliced_parameters(out, active_in)
        return F.linear(x, weight, bias)

    def flops(
        self, in_features: int, width: float | None = None, execution: str | None = None
    ) -> int:
        """Per-row FLOPs with `in_features` active inputs (`"masked"`: the full layer)."""
        if (self.execution if execution is None else parse_execution(execution, EXECUTIONS)) is Execution.MASKED:
            return 2 * self._max_in * self._max_out
        return 2 * in_features * self.out_channels_at(width)

    def _apply(self, fn, recurse=True):
        self._cache.clear()
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        if mode:
            self._cache.clear()
        return super().train(mode)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", slim_in={self.slim_in}, slim_out={self.slim_out}"
