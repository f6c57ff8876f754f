"""Translated and cluttered MNIST: each 28x28 digit pasted at a random place on a larger
canvas, optionally with random crops of other digits as clutter (the benchmark of recurrent
attention models, Mnih et al. 2014, and spatial transformers, Jaderberg et al. 2015).

The canvases are generated once from a seeded ``torch.Generator`` and cached as uint8
tensors in a ``.pt`` file, so every run sees the same data set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import torch

from ..errors import DataError
from .generated_cache import load_or_build_splits
from .spec_options import int_option, split_options

DIGIT = 28
"""Side of an MNIST digit."""
FRAGMENT = 8
"""Side of a clutter fragment (a crop of another digit)."""
VARIANTS = ("translated", "cluttered")
_KEYS = ("canvas", "variant", "fragments", "seed", "cache")
_CHUNK = 2048  # samples pasted at once (bounds the index tensors' memory)


class ClutterOptions(NamedTuple):
    """How to build the canvases (parsed from ``?canvas=60&variant=cluttered&...``)."""

    height: int = 60
    width: int = 60
    variant: str = "cluttered"
    fragments: int = 8
    seed: int = 0
    cache: Path | None = None

    def cache_name(self) -> str:
        """File name of the cache, e.g. ``cluttered_60x60_cluttered8_0.pt``."""
        clutter = f"cluttered{self.fragments}" if self.variant == "cluttered" else "translated"
        return f"cluttered_{self.height}x{self.width}_{clutter}_{self.seed}.pt"


def _int(key: str, text: str, minimum: int) -> int:
    return int_option("cluttered_mnist", key, text, minimum)


def parse_options(query: str) -> ClutterOptions:
    """Parse ``canvas=60&variant=cluttered&fragments=8&seed=0&cache=DIR`` (all optional).

    ``canvas`` is ``N`` (square) or ``HxW``, each at least 28; ``variant`` is ``translated``
    (digit only) or ``cluttered`` (digit + ``fragments`` 8x8 crops of other digits).

    Raises:
        DataError: naming the option at fault (an unknown key, a canvas under 28, an
            unknown variant, a negative count).
    """
    values = split_options("cluttered_mnist", query, _KEYS)
    canvas = values.get("canvas", "60").lower()
    sides = canvas.split("x") if "x" in canvas else [canvas, canvas]
    if len(sides) != 2:
        raise DataError(f"cluttered_mnist option 'canvas={canvas}': expected N or HxW")
    height, width = (_int("canvas", s, DIGIT) for s in sides)
    variant = values.get("variant", "cluttered").lower()
    if variant not in VARIANTS:
        raise DataError(
            f"cluttered_mnist option 'variant={variant}': expected one of {', '.join(VARIANTS)}"
        )
    fragments = _int("fragments", values.get("fragments", "8"), 0)
    seed = _int("seed", values.get("seed", "0"), 0)
    cache = Path(values["cache"]).expanduser() if values.get("cache") else None
    return ClutterOptions(height, width, variant, fragments, seed, cache)


def _paste(canvas, n, top, left, patch) -> None:
    """``canvas[n, top:top+h, left:left+w] = max(canvas[...], patch)`` for every row of ``n``.

    Args:
        canvas: ``(N, H, W)`` uint8, changed in place.
        n, top, left: ``(B,)`` int64.
        patch: ``(B, h, w)`` uint8.
    """
    h, w = patch.shape[1:]
    rows = (top[:, None] + torch.arange(h))[:, :, None]
    cols = (left[:, None] + torch.arange(w))[:, None, :]
    index = (n[:, None, None], rows, cols)
    canvas[index] = torch.maximum(canvas[index], patch)


def _uniform(high: int, size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, high + 1, (size,), generator=generator)


def generate(images: torch.Tensor, options: ClutterOptions, generator: torch.Generator):
    """Place every digit on its own canvas.

    Args:
        images: ``(N, D, D)`` uint8 square digits (MNIST's are 28x28; smaller ones, such as
            scikit-learn's 8x8 digits, make small canvases for tests).
        options: canvas size (each side ``>= D``), variant and fragment count.
        generator: the source of every random draw.

    Returns:
        canvases ``(N, H, W)`` uint8 and boxes ``(N, 4)`` int64 ``(top, left, bottom, right)``
        of each digit (bottom/right exclusive). Clutter fragments are ``FRAGMENT`` pixels
        square (``D // 2`` for digits under ``2 * FRAGMENT``).

    Raises:
        DataError: ``images`` not ``(N, D, D)``, or a canvas side under ``D`` (naming
            ``canvas``).
    """
    if images.dim() != 3 or images.shape[1] != images.shape[2] or images.shape[1] < 2:
        raise DataError(f"cluttered_mnist: digits must be (N, D, D) square images, got {tuple(images.shape)}")
    n_images, height, width = len(images), options.height, options.width
    digit = int(images.shape[1])
    if height < digit or width < digit:
        raise DataError(f"cluttered_mnist option 'canvas={height}x{width}': smaller than a {digit}x{digit} "
                        f"digit; each side must be >= {digit}")
    fragment = min(FRAGMENT, digit // 2)
    canvas = torch.zeros(n_images, height, width, dtype=torch.uint8)
    top = _uniform(height - digit, n_images, generator)
    left = _uniform(width - digit, n_images, generator)
    fragments = options.fragments if options.variant == "cluttered" else 0
    offsets = torch.arange(fragment)
    for _ in range(fragments):
        shift = torch.randint(0, max(n_images - 1, 1), (n_images,), generator=generator)
        other = (torch.arange(n_images) + 1 + shift) % n_images  # another digit where possible
        crop_y = _uniform(digit - fragment, n_images, generator)
        crop_x = _uniform(digit - fragment, n_images, generator)
        at_y = _uniform(height - fragment, n_images, generator)
        at_x = _uniform(width - fragment, n_images, generator)
        for s in range(0, n_images, _CHUNK):
            part = slice(s, s + _CHUNK)
            rows = (crop_y[part, None] + offsets)[:, :, None]
            cols = (crop_x[part, None] + offsets)[:, None, :]
            crops = images[other[part, None, None], rows, cols]
            _paste(canvas, torch.arange(n_images)[part], at_y[part], at_x[part], crops)
    for s in range(0, n_images, _CHUNK):
        part = slice(s, s + _CHUNK)
        _paste(canvas, torch.arange(n_images)[part], top[part], left[part], images[part])
    boxes = torch.stack([top, left, top + digit, left + digit], dim=1)
    return canvas, boxes


def load_or_generate(
    root: Path,
    options: ClutterOptions,
    read_split: Callable[[str], tuple[torch.Tensor, torch.Tensor] | None],
) -> dict:
    """The cached canvases of ``root``'s MNIST, generated and saved on the first call.

    Args:
        root: the MNIST folder (the cache goes there unless ``options.cache`` is set).
        options: see :func:`parse_options`.
        read_split: ``"train"``/``"t10k"`` -> ``(images (N, 1, 28, 28) uint8, labels (N,))``,
            or ``None`` when that split is absent; called only when no cache exists.

    Returns:
        ``{"train_images": (N, 1, H, W) uint8, "train_labels": (N,) int64, "train_boxes":
        (N, 4) int64, "test_*": the same or None}``.

    Raises:
        DataError: a cache file that is not one; OutputError: the cache cannot be written.
    """
    generator = torch.Generator().manual_seed(options.seed)

    def build(images: torch.Tensor, labels: torch.Tensor) -> dict:
        canvas, boxes = generate(images[:, 0], options, generator)
        return {"images": canvas.unsqueeze(1), "labels": labels, "boxes": boxes}

    path = (options.cache or root) / options.cache_name()
    return load_or_build_splits(path, "cluttered MNIST", ("images", "labels", "boxes"), read_split, build)
