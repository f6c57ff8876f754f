"""Data sets that need no files: scikit-learn's digits and locally generated MNIST-1D."""
from __future__ import annotations

import random

import numpy as np
import torch


def digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (1797 samples, 10 classes, shipped with it).

    Returns:
        ``x`` float32 ``(1797, 1, 8, 8)`` scaled from 0..16 to [0, 1] and ``y``
        int64 ``(1797,)``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return x, torch.from_numpy(digits.target.astype(np.int64))


def mnist1d_arrays() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST-1D (Greydanus 2020) generated locally with the package's default arguments.

    Uses ``mnist1d.data.make_dataset`` (never ``get_dataset``, which downloads and caches a
    file). The generator reseeds Python's and numpy's global random state; their previous
    state is restored afterwards so loading data does not change the caller's randomness.

    Returns:
        ``x_train`` float32 ``(4000, 1, 40)``, ``y_train`` int64 ``(4000,)``,
        ``x_test`` float32 ``(1000, 1, 40)``, ``y_test`` int64 ``(1000,)``.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    def as_x(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float32)).unsqueeze(1)

    def as_y(a):
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return as_x(data["x"]), as_y(data["y"]), as_x(data["x_test"]), as_y(data["y_test"])
