"""The synthetic data writers as one fixture for the data tests."""
from __future__ import annotations

import pytest

from synthetic_files import write_cifar10, write_cifar100, write_idx, write_imagefolder, write_mnist


@pytest.fixture
def writers():
    """The writers of `synthetic_files`, as one namespace for tests."""

    class Writers:
        idx = staticmethod(write_idx)
        mnist = staticmethod(write_mnist)
        cifar10 = staticmethod(write_cifar10)
        cifar100 = staticmethod(write_cifar100)
        imagefolder = staticmethod(write_imagefolder)

    return Writers
