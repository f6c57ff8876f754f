"""Moving MNIST with occlusion: each video is one MNIST digit bouncing over a blank canvas
for ``frames`` frames, with moving noise squares as distractors, and the digit fully
hidden under a noise block in all but ``visible`` randomly chosen frames, so that the
label can be read only in some frames (the setting of frame-selection video classifiers
such as AdaFrame, Wu et al. 2019, and FrameExit, Ghodrati et al. 2021).

Per video (all draws from one seeded ``torch.Generator``):

- the digit starts at a uniform place and moves at a uniform speed in ``[2, 5]`` pixels per
  frame in a uniform direction, bouncing off the canvas borders;
- ``occluders`` noise squares of side 14 (uniform random pixels) bounce the same way,
  pasted over the digit where they cross it;
- in ``frames - visible`` frames drawn uniformly without replacement, a 28x28 noise block
  covers the digit's box (the digit is then not visible at all in that frame);
- with ``fill=gray`` the squares and blocks are flat gray (128) instead of noise.

A sample is ``(1, T, H, W)``: channels, then frames (``nn.Conv3d``'s layout).

The videos are generated once and cached as uint8 tensors in a ``.pt`` file, so every run
sees the same data set.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from ..compact import rows_where
from ..errors import DataError
from .cluttered import DIGIT, _paste
from .generated_cache import load_or_build_splits
from .spec_options import int_option, split_options

OCCLUDER = 14
"""Side of a distractor noise square."""
SPEED = (2.0, 5.0)
"""Range of the digit's and the squares' speed, pixels per frame."""
_KEYS = ("frames", "size", "visible", "occluders", "fill", "videos", "seed", "cache")
FILLS = ("noise", "gray")
"""What occluders are made of: uniform random pixels, or a flat gray (128)."""
_NAME = "moving_mnist"
_CHUNK = 2048  # videos pasted at once


class MovingOptions(NamedTuple):
    """How to build the videos (parsed from ``?frames=16&size=48&visible=4&...``)."""

    frames: int = 16
    height: int = 48
    width: int = 48
    visible: int = 4
    occluders: int = 2
    fill: str = "noise"
    videos: int = 6000
    seed: int = 0
    cache: Path | None = None

    def cache_name(self) -> str:
        """File name of the cache, e.g. ``moving_mnist_48x48_t16_v4_o2_n6000_0.pt`` (``..._o2gray_...``
        for gray occluders)."""
        fill = "" if self.fill == "noise" else self.fill
        return (f"{_NAME}_{self.height}x{self.width}_t{self.frames}_v{self.visible}_o{self.occluders}{fill}"
                f"_n{self.videos}_{self.seed}.pt")


def _int(key: str, text: str, minimum: int, maximum: int | None = None, why: str = "") -> int:
    """`int_option`, with `why` (the reason for the bounds) appended to its error."""
    try:
        return int_option(_NAME, key, text, minimum, maximum)
    except DataError as err:
        if not why:
            raise
        raise DataError(f"{err}{why}") from None


def parse_options(query: str) -> MovingOptions:
    """Parse ``frames=16&size=48&visible=4&occluders=2&fill=noise&videos=6000&seed=0&cache=DIR``
    (all optional; these are the defaults).

    ``size`` is ``N`` (square) or ``HxW``, each side at least 28 (a digit must fit);
    ``visible`` is in ``[1, frames]``; ``videos`` caps how many training digits (and test
    digits) become videos, the first ones of the files; ``fill`` is ``noise`` or ``gray``
    (what the occluders and the blocks hiding the digit are made of).

    Raises:
        DataError: naming the option at fault (an unknown key, a canvas smaller than a
            digit, more visible frames than frames, a count out of range, an unknown fill).
    """
    values = split_options(_NAME, query, _KEYS)
    size = values.get("size", "48").lower()
    sides = size.split("x") if "x" in size else [size, size]
    if len(sides) != 2:
        raise DataError(f"{_NAME} option 'size={size}': expected N or HxW")
    height, width = (_int("size", s, DIGIT, why=f" (the canvas must hold a {DIGIT}x{DIGIT} digit)")
                     for s in sides)
    frames = _int("frames", values.get("frames", "16"), 1)
    visible = _int("visible", values.get("visible", str(min(4, frames))), 1, frames,
                   f" (frames in which the digit shows, at most frames={frames})")
    occluders = _int("occluders", values.get("occluders", "2"), 0)
    fill = values.get("fill", "noise").lower()
    if fill not in FILLS:
        raise DataError(f"{_NAME} option 'fill={fill}': expected one of {', '.join(FILLS)}")
    videos = _int("videos", values.get("videos", "6000"), 1)
    seed = _int("seed", values.get("seed", "0"), 0)
    cache = Path(values["cache"]).expanduser() if values.get("cache") else None
    return MovingOptions(frames, height, width, visible, occluders, fill, videos, seed, cache)


def bounce(count: int, frames: int, span_y: int, span_x: int, generator: torch.Generator) -> torch.Tensor:
    """Integer top-left corners of ``count`` objects bouncing inside a box.

    Args:
        count: number of objects.
        frames: number of frames ``T``.
        span_y, span_x: the largest top / left coordinate (canvas side minus object side).
        generator: the source of the random start, speed and direction.

    Returns:
        ``(count, T, 2)`` int64 ``(top, left)``, each in ``[0, span]``.
    """
    start = torch.rand(count, 2, generator=generator) * torch.tensor([span_y, span_x], dtype=torch.float32)
    speed = SPEED[0] + (SPEED[1] - SPEED[0]) * torch.rand(count, generator=generator)
    angle = 2 * math.pi * torch.rand(count, generator=generator)
    velocity = torch.stack([speed * angle.sin(), speed * angle.cos()], dim=1)
    t = torch.arange(frames, dtype=torch.float32)
    free = start[:, None, :] + t[None, :, None] * velocity[:, None, :]  # (count, T, 2), unbounded
    span = torch.tensor([span_y, span_x], dtype=torch.float32).clamp(min=1e-6)
    folded = torch.remainder(free, 2 * span)
    reflected = torch.where(folded > span, 2 * span - folded, folded)  # a triangle wave: bouncing
    limit = torch.tensor([span_y, span_x])
    return reflected.round().long().clamp(min=torch.zeros(2, dtype=torch.long), max=limit)


def _cover(canvas: torch.Tensor, n: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
           patch: torch.Tensor) -> None:
    """``canvas[n, top:top+h, left:left+w] = patch`` for every row of ``n`` (overwrite).

    Args:
        canvas: ``(N, H, W)`` uint8, changed in place.
        n, top, left: ``(B,)`` int64.
        patch: ``(B, h, w)`` uint8.
    """
    h, w = patch.shape[1:]
    rows = (top[:, None] + torch.arange(h))[:, :, None]
    cols = (left[:, None] + torch.arange(w))[:, None, :]
    canvas[n[:, None, None], rows, cols] = patch


def _patch(count: int, side: int, fill: str, generator: torch.Generator) -> torch.Tensor:
    """``(count, side, side)`` uint8 occluder pixels: uniform noise, or flat gray."""
    if fill == "gray":
        return torch.full((count, side, side), 128, dtype=torch.uint8)
    return torch.randint(0, 256, (count, side, side), generator=generator, dtype=torch.uint8)


def hidden_frames(count: int, frames: int, visible: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, frames)`` bool: True in the ``frames - visible`` frames (uniform, without
    replacement, per video) where the digit is hidden."""
    ranks = torch.rand(count, frames, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks >= visible


def generate(images: torch.Tensor, options: MovingOptions, generator: torch.Generator):
    """Make one video per digit.

    Args:
        images: ``(N, 28, 28)`` uint8 digits.
        options: frames, canvas size, visible frames, occluder count.
        generator: the source of every random draw.

    Returns:
        videos ``(N, 1, T, H, W)`` uint8 (channels first, then frames) and ``hidden`` ``(N, T)`` bool (True where a noise
        block covers the digit).
    """
    count, frames, height, width = len(images), options.frames, options.height, options.width
    videos = torch.zeros(count, frames, height, width, dtype=torch.uint8)
    digit_at = bounce(count, frames, height - DIGIT, width - DIGIT, generator)
    side = min(OCCLUDER, height, width)
    squares = [bounce(count, frames, height - side, width - side, generator) for _ in range(options.occluders)]
    hidden = hidden_frames(count, frames, options.visible, generator)
    for t in range(frames):
        canvas = videos[:, t]  # a view: pasting writes into the videos
        noise = [_patch(count, side, options.fill, generator) for _ in squares]
        block = _patch(count, DIGIT, options.fill, generator)
        for start in range(0, count, _CHUNK):  # chunks bound the index tensors' memory
            part = torch.arange(start, min(start + _CHUNK, count))
            top, left = digit_at[part, t, 0], digit_at[part, t, 1]
            _paste(canvas, part, top, left, images[part])
            for square, pixels in zip(squares, noise):
                _cover(canvas, part, square[part, t, 0], square[part, t, 1], pixels[part])
            covered = rows_where(hidden[part, t])
            _cover(canvas, part[covered], top[covered], left[covered], block[part[covered]])
    return videos.unsqueeze(1), hidden


def load_or_generate(
    root: Path,
    options: MovingOptions,
    read_split: Callable[[str], tuple[torch.Tensor, torch.Tensor] | None],
) -> dict:
    """The cached videos of ``root``'s MNIST, generated and saved on the first call.

    Args:
        root: the MNIST folder (the cache goes there unless ``options.cache`` is set).
        options: see :func:`parse_options`.
        read_split: ``"train"``/``"t10k"`` -> ``(images (N, 1, 28, 28) uint8, labels (N,))``,
            or ``None`` when that split is absent; called only when no cache exists.

    Returns:
        ``{"train_videos": (N, 1, T, H, W) uint8, "train_labels": (N,) int64,
        "train_hidden": (N, T) bool, "test_*": the same or None}``, ``N`` at most
        ``options.videos``.

    Raises:
        DataError: a cache file that is not one; OutputError: the cache cannot be written.
    """
    generator = torch.Generator().manual_seed(options.seed)

    def build(images: torch.Tensor, labels: torch.Tensor) -> dict:
        images, labels = images[: options.videos], labels[: options.videos]
        videos, hidden = generate(images[:, 0], options, generator)
        return {"videos": videos, "labels": labels, "hidden": hidden}

    path = (options.cache or root) / options.cache_name()
    return load_or_build_splits(path, _NAME, ("videos", "labels", "hidden"), read_split, build)
