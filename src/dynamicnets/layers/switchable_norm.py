"""Batch normalisation for slimmable networks.

The statistics of a channel depend on how many channels fed the layer before it, so a
network run at several widths cannot share one set of running statistics:

- `SwitchableBatchNorm2d` keeps one `BatchNorm2d` per configured width (Yu et al.,
  "Slimmable Neural Networks", 2019). Only the configured widths can run.
- `SlimmableBatchNorm2d` keeps one shared, sliced `BatchNorm2d`, so *any* width in a
  range runs (Yu & Huang, "Universally Slimmable Networks", 2019); before deploying a
  width, `calibrate_batchnorm` recomputes its running statistics on a few batches.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..execution import Execution
from .slimmable import channels_at, check_width


def _pad_channels(y: Tensor, channels: int) -> Tensor:
    """Zero-pad `(B, c, H, W)` to `(B, channels, H, W)` (the "masked" execution's layout)."""
    missing = channels - y.shape[1]
    return y if missing == 0 else F.pad(y, (0, 0, 0, 0, 0, missing))


class SwitchableBatchNorm2d(nn.Module):
    """One `BatchNorm2d` per configured width; `forward(x, width)` uses that width's.

    Args:
        num_features: channels at the widest configuration.
        widths: the configured width fractions in `(0, 1]`; must include 1.0.
        eps, momentum: as `nn.BatchNorm2d`.

    Attributes:
        widths: the widths, sorted ascending.
        bns: `nn.ModuleList`, `bns[i]` is a `BatchNorm2d(channels_at(num_features, widths[i]))`.
        execution: `"compact"` (default), `"indexed"` (same as slice: each norm owns its
            parameters) or `"masked"`.

    Shapes:
        `(B, channels_at(num_features, width), H, W)` -> same. In `"masked"` execution the
        input has all `num_features` channels and the output too, zero beyond the width.
    """

    def __init__(
        self,
        num_features: int,
        widths: Sequence[float],
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        checked = sorted({check_width(w, "SwitchableBatchNorm2d") for w in widths})
        if not checked or checked[-1] != 1.0:
            raise ConfigError(f"SwitchableBatchNorm2d: widths must include 1.0, got {list(widths)}")
        self.num_features = num_features
        self.widths = tuple(checked)
        self._index = {w: i for i, w in enumerate(self.widths)}
        self.bns = nn.ModuleList(
            nn.BatchNorm2d(
                channels_at(num_features, w), eps=eps, momentum=momentum, device=device, dtype=dtype
            )
            for w in self.widths
        )
        self.execution = Execution.COMPACT

    def index_of(self, width: float | None) -> int:
        """Index into `widths`/`bns` of `width` (`None` = 1.0); `ConfigError` if not configured."""
        if width is None:
            return len(self.widths) - 1
        index = self._index.get(width)
        if index is None:
            raise ConfigError(
                f"SwitchableBatchNorm2d: width {width!r} is not configured; configured "
                f"widths: {list(self.widths)} (use SlimmableBatchNorm2d for any width)"
            )
        return index

    def norm_at(self, width: float | None) -> nn.BatchNorm2d:
        """The `BatchNorm2d` used at `width`."""
        return self.bns[self.index_of(width)]

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:
        bn = self.bns[self.index_of(width)]
        if self.execution is Execution.MASKED:
            return _pad_channels(bn(x[:, : bn.num_features]), self.num_features)
        if x.shape[1] != bn.num_features:
            raise ConfigError(
                f"SwitchableBatchNorm2d: width {width} has {bn.num_features} channels, "
                f"the input has {x.shape[1]}"
            )
        return bn(x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, widths={list(self.widths)}"


class SlimmableBatchNorm2d(nn.BatchNorm2d):
    """A `BatchNorm2d` whose parameters and running statistics are sliced to the input width.

    Any width works; the running statistics are shared by all widths, so recalibrate
    them for the width you deploy with `calibrate_batchnorm`.

    Args:
        num_features: channels at the widest configuration; other args as `nn.BatchNorm2d`.

    Attributes:
        execution: `"compact"` (default), `"indexed"` (parameters gathered with `index_select`)
            or `"masked"`.

    Shapes:
        `forward(x, width)`: `(B, c, H, W) -> (B, c, H, W)` with `c <= num_features`
        (`width` is only read in `"masked"` execution, where `c == num_features` and the
        output is zero beyond `channels_at(num_features, width)`).
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.execution = Execution.COMPACT

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:  # type: ignore[override]
        if self.execution is Execution.MASKED:
            active = self.num_features if width is None else channels_at(self.num_features, width)
            return _pad_channels(self._normalize(x[:, :active]), self.num_features)
        if x.shape[1] > self.num_features:
            raise ConfigError(
                f"SlimmableBatchNorm2d: input has {x.shape[1]} channels, at most "
                f"{self.num_features} expected"
            )
        return self._normalize(x)

    def _normalize(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average (what calibration uses)
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        mean, var, weight, bias = self._parameters_for(c, x.device)
        return F.batch_norm(x, mean, var, weight, bias, use_batch_stats, factor, self.eps)

    def _parameters_for(self, c: int, device: torch.device) -> tuple:
        """`(running_mean, running_var, weight, bias)` for the first `c` channels."""
        tensors = (self.running_mean, self.running_var, self.weight, self.bias)
        if c == self.num_features:
            return tensors
        if self.execution is Execution.INDEXED:
            index = torch.arange(c, device=device)
            # running statistics stay views: batch_norm updates them in place
            return tuple(
                None if t is None else (t[:c] if i < 2 else t.index_select(0, index))
                for i, t in enumerate(tensors)
            )
        return tuple(None if t is None else t[:c] for t in tensors)


def calibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Tensor],
    width: float | None = None,
    forward: Callable[[Tensor], Any] | None = None,
) -> int:
    """Recompute the running statistics a width uses, from `batches` (US-Nets' BN calibration).

    Every norm layer the width uses is reset and re-estimated as the exact (cumulative)
    average over the batches, in train mode without gradients. `SwitchableBatchNorm2d`
    resets only the norm of `width`; `SlimmableBatchNorm2d` and plain `BatchNorm2d`
    are reset entirely. Momentum and every module's train/eval mode are restored.

    Args:
        model: a network whose forward takes `(x, width=...)`.
        batches: iterable of input batches `(B, ...)` (no labels).
        width: the width to calibrate (`None` = the widest).
        forward: how to run one batch, default `model(x, width=width)`.

    Returns:
        The number of samples seen.
    """
    if width is not None:
        width = check_width(width, "calibrate_batchnorm")
    run = forward or (lambda x: model(x, width=width))
    switchable = [m for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)]
    owned = {id(bn) for m in switchable for bn in m.bns}
    targets = [m.norm_at(width) for m in switchable] + [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in owned
    ]
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in targets}
    seen = 0
    try:
        for bn in targets:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with torch.no_grad():
            for x in batches:
                run(x)
                seen += x.shape[0]
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise ConfigError("calibrate_batchnorm: batches was empty; give at least one batch")
    return seen

