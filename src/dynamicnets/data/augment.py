"""Batched training augmentations on raw stored images: random crop and flip (one gather), Cutout."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class RandomCropFlip:
    """The standard CIFAR training augmentation: pad by ``padding`` zeros, crop back to the
    original size at a random offset, then mirror left-right with probability 1/2.

    Works on the raw (e.g. uint8) images, so the padding is black as in torchvision's
    ``RandomCrop(32, padding=4)`` applied before normalisation. Each sample gets its own
    offset and flip; the whole batch is then cropped by a single ``gather`` over the
    flattened pixels (several times faster than advanced indexing or a per-sample loop).
    Randomness comes from torch's global generator, which ``DataLoader`` seeds per worker.

    Args:
        padding: pixels of zero padding on each side.
        flip: also mirror horizontally at random.
    """

    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding = padding
        self.flip = flip

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Crop (and flip) every image of a batch, each independently.

        Args:
            images: ``(B, C, H, W)`` of any dtype.

        Returns:
            ``(B, C, H, W)``, same dtype, each sample cropped/flipped independently.
        """
        batch, channels, height, width = images.shape
        pad = self.padding
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        padded_width = width + 2 * pad
        top = torch.randint(0, 2 * pad + 1, (batch, 1, 1))
        left = torch.randint(0, 2 * pad + 1, (batch, 1, 1))
        cols = torch.arange(width).view(1, 1, width)
        if self.flip:
            mirrored = torch.rand(batch, 1, 1) < 0.5
            cols = torch.where(mirrored, width - 1 - cols, cols)
        rows = torch.arange(height).view(1, height, 1) + top
        flat = (rows * padded_width + cols + left).view(batch, 1, height * width)
        cropped = padded.reshape(batch, channels, -1).gather(2, flat.expand(-1, channels, -1))
        return cropped.view(batch, channels, height, width)


class Cutout:
    """Cutout (DeVries & Taylor 2017): fill one ``size`` x ``size`` square of every image
    with a constant, the square centred at a uniformly random pixel and clipped at the
    borders (so a square near an edge covers less). The paper uses 16 on CIFAR-10.

    Works on the raw stored images like :class:`RandomCropFlip`; ``fill`` is in the same
    units (:func:`cutout_fill` gives the dataset mean, which normalises to the zeros the
    paper fills with). Each sample gets its own square, drawn from torch's global generator.

    Args:
        size: side of the square in pixels, >= 1.
        fill: one value per channel, in the stored units.
    """

    def __init__(self, size: int, fill: tuple[float, ...]):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"cutout size must be an integer >= 1, got {size!r}")
        self.size = size
        self.fill = tuple(float(v) for v in fill)

    def __repr__(self) -> str:
        return f"Cutout(size={self.size}, fill={self.fill})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Cut one square out of every image of a batch.

        Args:
            images: ``(B, C, H, W)`` of any dtype, ``C == len(fill)``.

        Returns:
            ``(B, C, H, W)``, same dtype, a new tensor.
        """
        batch, channels, height, width = images.shape
        if channels != len(self.fill):
            raise ValueError(f"Cutout has {len(self.fill)} fill values for {channels}-channel images")
        centre_y = torch.randint(0, height, (batch, 1, 1, 1))
        centre_x = torch.randint(0, width, (batch, 1, 1, 1))
        top, left = centre_y - self.size // 2, centre_x - self.size // 2
        rows = torch.arange(height).view(1, 1, height, 1)
        cols = torch.arange(width).view(1, 1, 1, width)
        inside = (rows >= top) & (rows < top + self.size) & (cols >= left) & (cols < left + self.size)
        fill = torch.tensor(self.fill).to(images.dtype).view(1, channels, 1, 1)
        return torch.where(inside, fill, images)


def cutout_fill(scale: float, mean: tuple[float, ...] | None, channels: int, dtype: torch.dtype) -> tuple[float, ...]:
    """The stored value of each channel's mean (``mean / scale``; 0 without a mean), rounded
    for integer storage: what normalises to (about) zero.

    Args:
        scale: the dataset's multiplier of stored values (``1/255`` for uint8 pixels).
        mean: its per-channel mean after scaling, or ``None``.
        channels: number of channels.
        dtype: the stored dtype.
    """
    values = [0.0] * channels if mean is None else [m / scale for m in mean]
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        values = [float(min(max(round(v), info.min), info.max)) for v in values]
    return tuple(values)


class Augmentations:
    """Several batch augmentations applied in order (e.g. crop and flip, then Cutout)."""

    def __init__(self, *steps):
        self.steps = tuple(steps)

    def __repr__(self) -> str:
        return f"Augmentations({', '.join(map(repr, self.steps))})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            images = step(images)
        return images
