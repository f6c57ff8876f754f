"""Resizing images to one of a set of resolutions (dynamic-resolution networks).

- `check_resolutions(resolutions, input_size, owner)`: the one validation of a resolution
  list (non-empty, ints >= 1, strictly increasing, none larger than the input).
- `resize(x, size, antialias)`: bilinear resize of `(B, C, H, W)` to `(B, C, size, size)`
  (or `(B, C, H', W')` for a `size` pair); a no-op when the input already has that size.
- `resize_flops(in_shape, size, antialias)`: the arithmetic of that resize. Like pooling, a
  resize is *free* in the library's FLOPs (and in `torch.utils.flop_counter.FlopCounterMode`,
  which has no formula for interpolation); this figure states what it would cost, to be
  reported apart.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def check_resolutions(resolutions: Sequence[int], input_size: int, owner: str) -> tuple[int, ...]:
    """`resolutions` as a tuple after checking it.

    Args:
        resolutions: the square sizes a model may run at.
        input_size: the side of the inputs (each resolution must be `<= input_size`).
        owner: names the model in errors.

    Raises:
        ConfigError: naming `resolutions`: empty, not ints >= 1, not strictly increasing, or
            one larger than `input_size`.
    """
    values = tuple(resolutions) if isinstance(resolutions, (list, tuple)) else ()
    if not values or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in values):
        raise ConfigError(f"{owner}: resolutions must be a non-empty list of ints >= 1, got {resolutions!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"{owner}: resolutions must be strictly increasing, got {list(values)}")
    if values[-1] > input_size:
        raise ConfigError(f"{owner}: resolutions {list(values)} include sizes larger than the input "
                          f"({input_size}x{input_size}); each must be <= the input's side")
    return values


def resize(x: Tensor, size: int | Sequence[int], antialias: bool = True) -> Tensor:
    """Bilinear resize (`align_corners=False`); `x` itself when it already has that size.

    `antialias=True` low-pass filters when shrinking (what an image library's resize does);
    `False` reads the 4 nearest pixels only (halving a side is then exactly a 2x2 mean).

    Args:
        x: `(B, C, H, W)`.
        size: the side `s` of a square output, or its `(H', W')`.
        antialias: filter when shrinking.

    Returns:
        `(B, C, s, s)` or `(B, C, H', W')`.
    """
    target = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == target:
        return x
    return F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=antialias)


def _taps(in_size: int, out_size: int, antialias: bool) -> int:
    scale = in_size / out_size
    return 2 * math.ceil(scale) if antialias and scale > 1 else 2


def resize_flops(in_shape: tuple[int, ...], size: int, antialias: bool = True) -> int:
    """Per-sample arithmetic of `resize` on a `(C, H, W)` input (2 FLOPs per multiply-add).

    A separable filter: a pass along the width (`C * H * size` values of `taps_w` taps each),
    then along the height (`C * size * size` values of `taps_h` taps); bilinear has 2 taps per
    axis, its antialiased form `2 * ceil(scale)` when shrinking by `scale`. 0 when no resize
    runs. Not part of any reported FLOPs (see the module docstring).
    """
    c, height, width = in_shape
    if height == size and width == size:
        return 0
    return 2 * c * size * (height * _taps(width, size, antialias) + size * _taps(height, size, antialias))
