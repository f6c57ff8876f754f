"""A data set held in memory as one tensor of samples and one of labels."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset, default_collate


class InMemoryDataset(Dataset):
    """Samples stored compactly (e.g. uint8 pixels), converted to float32 when fetched.

    Several datasets can view the same storage through different ``indices`` (the
    train/validation split copies nothing). Fetching is batched: ``DataLoader`` calls
    :meth:`__getitems__` with a whole batch of indices, so gathering, augmenting and
    normalising cost a few tensor operations per batch rather than per image.

    Args:
        samples: ``(N, *input_shape)``, uint8 or floating.
        labels: int64 ``(N,)``.
        indices: int64 ``(M,)`` positions into ``samples`` this dataset exposes, or ``None``
            for all of them.
        scale: multiplies the stored values first (e.g. ``1/255`` for uint8 pixels).
        mean, std: per-channel statistics, subtracted/divided after scaling
            (``None``: no normalisation).
        augment: applied to the raw stored batch ``(B, *input_shape)`` before conversion,
            or ``None``.
    """

    def __init__(
        self,
        samples: torch.Tensor,
        labels: torch.Tensor,
        *,
        indices: torch.Tensor | None = None,
        scale: float = 1.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if len(samples) != len(labels):
            raise ValueError(f"{len(samples)} samples but {len(labels)} labels")
        self.samples = samples
        self.labels = labels.to(torch.int64)
        self.indices = indices
        self.augment = augment
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.scale = float(scale)
        # x * gain + offset == (x * scale - mean) / std, one fused pass per batch
        channels = samples.shape[1]
        broadcast = (channels,) + (1,) * (samples.dim() - 2)
        mean_t = torch.zeros(channels) if mean is None else torch.tensor(self.mean)
        std_t = torch.ones(channels) if std is None else torch.tensor(self.std)
        self._gain = (self.scale / std_t).view(broadcast)
        self._offset = (-mean_t / std_t).view(broadcast)
        self._identity = self.scale == 1.0 and mean is None and std is None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(3, 32, 32)``."""
        return tuple(self.samples.shape[1:])

    @property
    def targets(self) -> torch.Tensor:
        """The labels of this dataset in order, int64 ``(len(self),)``."""
        return self.labels if self.indices is None else self.labels[self.indices]

    def with_indices(self, indices: torch.Tensor, *, augment=None) -> "InMemoryDataset":
        """A dataset over ``indices`` (positions into this one) sharing the same storage.

        Args:
            indices: int64 ``(M,)``.
            augment: augmentation of the new dataset (``None``: none).
        """
        base = indices if self.indices is None else self.indices[indices]
        return InMemoryDataset(
            self.samples, self.labels, indices=base, scale=self.scale,
            mean=self.mean, std=self.std, augment=augment,
        )

    def with_preprocessing(
        self, *, scale: float, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> "InMemoryDataset":
        """The same samples (same storage, indices and augmentation) prepared with another
        `scale`, `mean` and `std`."""
        return InMemoryDataset(
            self.samples, self.labels, indices=self.indices, scale=scale,
            mean=mean, std=std, augment=self.augment,
        )

    def whole(self) -> "InMemoryDataset":
        """Every stored sample (whatever `indices` this dataset exposes), not augmented."""
        return InMemoryDataset(self.samples, self.labels, scale=self.scale, mean=self.mean, std=self.std)

    def __len__(self) -> int:
        return len(self.samples) if self.indices is None else len(self.indices)

    def fetch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather, augment and normalise a batch.

        Args:
            positions: int64 ``(B,)`` in ``[0, len(self))``.

        Returns:
            ``x`` float32 ``(B, *input_shape)`` and ``y`` int64 ``(B,)``.
        """
        if self.indices is not None:
            positions = self.indices[positions]
        raw = self.samples[positions]
        if self.augment is not None:
            raw = self.augment(raw)
        x = raw.to(torch.float32)
        if not self._identity:
            x = x.mul_(self._gain).add_(self._offset)
        return x, self.labels[positions]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample.

        Returns:
            ``x`` float32 ``input_shape`` and ``y`` int64 scalar.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        x, y = self.fetch(torch.tensor([index % len(self)]))
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> "FetchedBatch":
        """Batched fetch used by ``DataLoader``; returns one ``(x, y)`` pair per index
        (a :class:`FetchedBatch`, which :func:`collate_batch` turns back into the batch
        without copying)."""
        x, y = self.fetch(torch.as_tensor(indices, dtype=torch.int64))
        return FetchedBatch(x, y)

    def __repr__(self) -> str:
        return (
            f"InMemoryDataset(len={len(self)}, input_shape={self.input_shape}, "
            f"dtype={self.samples.dtype}, augment={self.augment})"
        )


class FetchedBatch(list):
    """The ``(x, y)`` pairs of a batch -- views into the batched tensors -- that also keep
    those tensors, so :func:`collate_batch` hands them on instead of stacking the pairs
    again (a copy of the whole batch that used to take about half of the loading time).

    Args:
        x: ``(B, *input_shape)``.
        y: ``(B,)``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__(zip(x.unbind(0), y.unbind(0)))
        self.x = x
        self.y = y


def collate_batch(data):
    """``DataLoader`` collate: a :class:`FetchedBatch` gives ``[x, y]`` as fetched (the
    values ``default_collate`` would stack), anything else goes to ``default_collate``."""
    if isinstance(data, FetchedBatch) and len(data) == len(data.x):
        return [data.x, data.y]
    return default_collate(data)
