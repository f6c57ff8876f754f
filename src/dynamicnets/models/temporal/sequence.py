"""Reading a per-sample input as a sequence of steps, for the recurrent models.

- `(C, L)` signals (MNIST-1D): one step per position, `C` features per step.
- `(C, H, W)` images (digits, MNIST), `reading="rows"`: one step per row, `C * W`
  features per step (the row-by-row reading of "sequential MNIST", `H` steps).
- `(C, H, W)` images, `reading="pixels"`: one step per pixel in raster order, `C`
  features per step (the pixel-by-pixel reading, `H * W` steps): step `t` is pixel
  `(t // W, t % W)`.
"""
from __future__ import annotations

from torch import Tensor

from ...errors import ConfigError

READINGS = ("rows", "pixels")


def check_reading(model: str, reading: str, row_width: int | None) -> str:
    """`reading` if it is `"rows"` or `"pixels"` (the latter only for images, `row_width` set).

    Raises:
        ConfigError: naming `reading` and what was expected.
    """
    if not isinstance(reading, str) or reading not in READINGS:
        raise ConfigError(f"model {model!r}: reading must be one of {READINGS}, got {reading!r}")
    if reading == "pixels" and row_width is None:
        raise ConfigError(f"model {model!r}: reading='pixels' reads (C, H, W) images; "
                          "set model_args.row_width to the image width")
    return reading


def step_features(model: str, in_chans: int, row_width: int | None, reading: str = "rows") -> int:
    """Features per step for `(C, L)` inputs (`row_width=None`) or `(C, H, row_width)` images
    read by `reading` (`"rows"`: `C * row_width`, `"pixels"`: `C`)."""
    if row_width is None:
        check_reading(model, reading, row_width)
        return in_chans
    if not isinstance(row_width, int) or isinstance(row_width, bool) or row_width < 1:
        raise ConfigError(f"model {model!r}: row_width must be an int >= 1 or null, got {row_width!r}")
    if check_reading(model, reading, row_width) == "pixels":
        return in_chans
    return in_chans * row_width


def sequence_steps(input_shape: tuple[int, ...], reading: str = "rows") -> int:
    """Steps of a per-sample `(C, L)` or `(C, H, W)` input: `L`, `H` (rows) or `H * W` (pixels)."""
    if reading == "pixels":
        return input_shape[1] * input_shape[2]
    return input_shape[1]


def as_sequence(model: str, x: Tensor, in_chans: int, row_width: int | None, reading: str = "rows") -> Tensor:
    """`(B, C, L) -> (B, L, C)`; `(B, C, H, W) -> (B, H, C * W)` (rows) or `(B, H * W, C)` (pixels).

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
    if reading == "pixels":
        return x.flatten(2).transpose(1, 2)
    return x.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], in_chans * row_width)
