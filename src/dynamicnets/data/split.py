"""Seeded train/validation split of a training set."""
from __future__ import annotations

import torch

from ..errors import SplitError


def validation_count(n: int, val_size: float | int) -> int:
    """Number of validation samples out of ``n``.

    Args:
        n: size of the training set.
        val_size: a float in (0, 1) is a fraction of ``n`` (rounded); an int is a count.

    Returns:
        the count, at least 1 and at most ``n - 1``.

    Raises:
        SplitError: ``val_size`` is not a fraction or count, or leaves no sample on a side.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise SplitError(f"val_size must be a float fraction or an int count, got {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise SplitError(f"val_size={val_size} as a fraction must lie strictly in (0, 1)")
        count = round(n * val_size)
    else:
        count = val_size
    if not 1 <= count < n:
        raise SplitError(
            f"val_size={val_size!r} gives {count} validation samples out of {n}; "
            f"expected between 1 and {n - 1}"
        )
    return count


def split_indices(n: int, val_size: float | int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into disjoint training and validation indices.

    The same ``(n, val_size, seed)`` always gives the same split; each part is sorted so that
    samples keep the order of the files.

    Returns:
        ``train_indices`` int64 ``(n - k,)`` and ``val_indices`` int64 ``(k,)``,
        with ``k = validation_count(n, val_size)``.
    """
    count = validation_count(n, val_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[count:].sort().values, order[:count].sort().values
