"""Data sets generated from MNIST once and cached on disk (cluttered MNIST, moving MNIST).

Both build, for the ``train`` and (when present) ``t10k`` MNIST splits, a few tensors per
split from a seed, save them with one atomic write, and load that file on every later
call, so the data are never re-randomised between runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from ..errors import DataError
from ..writing import atomic_write_with

SplitReader = Callable[[str], "tuple[torch.Tensor, torch.Tensor] | None"]
"""``"train"``/``"t10k"`` -> ``(images (N, 1, 28, 28) uint8, labels (N,))``, or ``None``."""


def _check(data, path: Path, what: str, keys: Sequence[str]) -> dict:
    names = [f"{split}_{k}" for split in ("train", "test") for k in keys]
    ok = isinstance(data, dict) and isinstance(data.get(f"train_{keys[0]}"), torch.Tensor)
    ok = ok and all(data.get(k) is None or isinstance(data[k], torch.Tensor) for k in names)
    if not ok:
        raise DataError(f"'{path}' is not a {what} cache; delete it to regenerate")
    return data


def load_or_build_splits(path: Path, what: str, keys: Sequence[str], read_split: SplitReader,
                         build: Callable[[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]]) -> dict:
    """The cache at ``path``, or build it from the MNIST splits and save it first.

    Args:
        path: the cache file.
        what: the data set's name, for messages.
        keys: the tensors each split holds (the first must be present for ``train``).
        read_split: reads an MNIST split; called only when no cache exists.
        build: ``(images, labels) -> {key: tensor}`` for one split, called train first,
            then test (one seeded generator can run through both).

    Returns:
        ``{f"{split}_{key}": tensor or None}`` for ``split`` in ``train``, ``test``
        (``None`` where the split is absent).

    Raises:
        DataError: a file at ``path`` that is not such a cache; OutputError: it cannot
            be written.
    """
    if path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a foreign or damaged file: say which, do not guess
            raise DataError(f"'{path}' cannot be read as a cache ({err}); delete it to regenerate") from err
        return _check(data, path, what, keys)
    data: dict = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pair = read_split(prefix)
        built = {} if pair is None else dict(build(*pair))
        data.update({f"{split}_{k}": built.get(k) for k in keys})
    atomic_write_with(path, lambda handle: torch.save(data, handle))
    return data
