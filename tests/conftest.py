"""Fixtures shared by test folders."""
from __future__ import annotations

from pathlib import Path

import pytest

from synthetic_files import write_cifar10


def _write_tiny_cifar10(root: Path, per_batch: int = 8) -> Path:
    """A `cifar-10-batches-py` folder of random images: five training batches, no test files."""
    write_cifar10(root, per_batch=per_batch, meta=False)
    return root


@pytest.fixture
def tiny_cifar10():
    """`tiny_cifar10(root, per_batch=8)` writes a small CIFAR-10 folder of random images at `root`."""
    return _write_tiny_cifar10
