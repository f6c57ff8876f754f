"""Where an attack perturbs: the pixels a model's normalised inputs are made from.

A model of this library sees `x = (p - mean) / std`, with `p` the pixels scaled to their
stored range (`dynamicnets.data.preprocessing.Preprocessing`: uint8 pixels / 255 for
MNIST, CIFAR and image folders, digits' values in [0, 1]). A budget `eps` such as 8/255
is a budget on `p`, and an adversarial image must stay a valid image (`low <= p <=
high`), so attacks step and project in pixel space and hand the model `x` again.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.preprocessing import Preprocessing

FLOAT_RANGES: dict[str, tuple[float, float]] = {"digits": (0.0, 1.0)}
"""Value ranges of data sets stored as float32 (others stored as floats are unbounded)."""


@dataclass(frozen=True)
class InputSpace:
    """Model inputs `x = (p - mean) / std` of pixels `p` in `[low, high]`.

    Attributes:
        mean: per-channel values subtracted from the pixels, length `C`; `None`: zeros.
        std: per-channel values the pixels are divided by, length `C`; `None`: ones.
        low: the smallest valid pixel value; `None`: unbounded below.
        high: the largest valid pixel value; `None`: unbounded above.

    The default is pixels in [0, 1] fed to the model as they are (digits).
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    low: float | None = 0.0
    high: float | None = 1.0

    @classmethod
    def from_preprocessing(cls, prep: Preprocessing | None, data: str | None = None) -> InputSpace:
        """The pixel space behind a trained model's inputs.

        Args:
            prep: how the data source's stored samples became model inputs (recorded in
                every checkpoint); `None` (a data set not read by `load_data`): inputs are
                taken as they are, unbounded.
            data: the data spec or name (`cifar10:DIR`, `digits`), to look up the value
                range of data stored as floats (`FLOAT_RANGES`).

        Returns:
            uint8 storage: pixels in `[0, 255 * scale]` (`[0, 1]` for every `load_data`
            source); float storage: the range of `FLOAT_RANGES` or unbounded.
        """
        if prep is None:
            return cls(low=None, high=None)
        if prep.storage == "uint8":
            low, high = 0.0, 255.0 * prep.scale
        else:
            name = (data or "").partition(":")[0].strip().lower()
            low, high = FLOAT_RANGES.get(name, (None, None))
        return cls(mean=prep.mean, std=prep.std, low=low, high=high)

    def _channels(self, values: Sequence[float] | None, x: Tensor) -> Tensor | None:
        if values is None:
            return None
        shape = (1, len(values)) + (1,) * (x.dim() - 2)
        return torch.tensor(values, dtype=x.dtype, device=x.device).view(shape)

    def to_pixels(self, x: Tensor) -> Tensor:
        """`(B, C, ...)` model inputs -> the pixels they were made from, same shape."""
        std, mean = self._channels(self.std, x), self._channels(self.mean, x)
        p = x if std is None else x * std
        return p if mean is None else p + mean

    def to_inputs(self, p: Tensor) -> Tensor:
        """`(B, C, ...)` pixels -> model inputs, same shape."""
        std, mean = self._channels(self.std, p), self._channels(self.mean, p)
        x = p if mean is None else p - mean
        return x if std is None else x / std

    def clamp(self, p: Tensor) -> Tensor:
        """Pixels clamped to `[low, high]` (unbounded sides left as they are)."""
        if self.low is None and self.high is None:
            return p
        return p.clamp(min=self.low, max=self.high)
