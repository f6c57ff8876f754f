"""Fixtures shared by test folders."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest


def _write_tiny_cifar10(root: Path, per_batch: int = 8) -> Path:
    """A `cifar-10-batches-py` folder of random images: five training batches, no test files."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


@pytest.fixture
def tiny_cifar10():
    """`tiny_cifar10(root, per_batch=8)` writes a small CIFAR-10 folder of random images at `root`."""
    return _write_tiny_cifar10
