"""`SlimmableConvNormAct`: slimmable conv (no bias) + per-width BatchNorm + optional ReLU."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...layers.slimmable import SlimmableConv2d
from ...layers.switchable_norm import SlimmableBatchNorm2d, SwitchableBatchNorm2d

NORMS = ("switchable", "universal")


def make_norm(
    channels: int, widths: Sequence[float], norm: str, *, device=None, dtype=None
) -> nn.Module:
    """`SwitchableBatchNorm2d(channels, widths)` for `"switchable"`, `SlimmableBatchNorm2d`
    for `"universal"` (any width; recalibrate with `calibrate_batchnorm`)."""
    if norm == "switchable":
        return SwitchableBatchNorm2d(channels, widths, device=device, dtype=dtype)
    if norm == "universal":
        return SlimmableBatchNorm2d(channels, device=device, dtype=dtype)
    raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}")


class SlimmableConvNormAct(nn.Module):
    """`SlimmableConv2d -> norm -> ReLU` (ReLU optional), padding `kernel_size // 2`.

    Args:
        in_chans, out_chans: channels at the widest configuration.
        kernel_size, stride: of the convolution.
        widths: configured width fractions (for a switchable norm).
        norm: `"switchable"` (one BN per width) or `"universal"` (one sliced BN).
        act: apply ReLU after the norm.
        slim_in: the input channels follow the width (False for a stem on the image).

    Shapes:
        `forward(x, width)`: `(B, c_in, H, W) -> (B, channels_at(out_chans, width), H', W')`.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int,
        stride: int = 1,
        *,
        widths: Sequence[float],
        norm: str = "switchable",
        act: bool = True,
        slim_in: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.conv = SlimmableConv2d(
            in_chans, out_chans, kernel_size, stride, kernel_size // 2, bias=False,
            slim_in=slim_in, device=device, dtype=dtype,
        )
        self.bn = make_norm(out_chans, widths, norm, device=device, dtype=dtype)
        self.act = act
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:
        y = self.bn(self.conv(x, width), width)
        return F.relu(y, inplace=True) if self.act else y

    def flops_and_shape(
        self,
        in_shape: tuple[int, int, int],
        width: float | None = None,
        execution: str | None = None,
    ) -> tuple[int, tuple[int, int, int]]:
        """Per-sample FLOPs on a `(c_in, H, W)` input and the output shape (see the conv)."""
        return self.conv.flops_and_shape(in_shape, width, execution)
