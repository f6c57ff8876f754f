"""Reading a per-sample input as a sequence of steps, for the recurrent models.

- `(C, L)` signals (MNIST-1D): one step per position, `C` features per step.
- `(C, H, W)` images (digits, MNIST): one step per row, `C * W` features per step (the
  row-by-row reading of "sequential MNIST").
"""
from __future__ import annotations

from torch import Tensor

from ...errors import ConfigError


def step_features(model: str, in_chans: int, row_width: int | None) -> int:
    """Features per step for `(C, L)` inputs (`row_width=None`) or `(C, H, row_width)` images."""
    if row_width is None:
        return in_chans
    if not isinstance(row_width, int) or isinstance(row_width, bool) or row_width < 1:
        raise ConfigError(f"model {model!r}: row_width must be an int >= 1 or null, got {row_width!r}")
    return in_chans * row_width


def as_sequence(model: str, x: Tensor, in_chans: int, row_width: int | None) -> Tensor:
    """`(B, C, L) -> (B, L, C)` or `(B, C, H, W) -> (B, H, C * W)`.

    Raises:
        ConfigError: `x` is not `(B, in_chans, L)` (`row_width=None`) or
            `(B, in_chans, H, row_width)`.
    """
    if row_width is None:
        if x.dim() != 3 or x.shape[1] != in_chans:
            raise ConfigError(f"model {model!r} expects (B, {in_chans}, L) signals, got {tuple(x.shape)}; "
                              "for images set model_args.row_width to the image width")
        return x.transpose(1, 2)
    if x.dim() != 4 or x.shape[1] != in_chans or x.shape[3] != row_width:
        raise ConfigError(f"model {model!r} expects (B, {in_chans}, H, {row_width}) images, got {tuple(x.shape)}")
    return x.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], in_chans * row_width)
