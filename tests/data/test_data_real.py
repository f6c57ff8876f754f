"""Real CIFAR-10 and MNIST from the repository's data/ folder (slow; skipped when the folder is absent)."""
import time
from pathlib import Path

import pytest
import torch

from dynamicnets.data import load_data, make_loaders

SHARED_DATA = Path(__file__).parents[2] / "data"


def _require(folder: str) -> Path:
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.mark.slow
def test_real_cifar10_split_and_loader_throughput():
    path = _require("cifar-10-batches-py")
    bundle = load_data(f"cifar10:{path}", val_size=5000, seed=0)
    assert (len(bundle.train), len(bundle.val)) == (45000, 5000)
    assert bundle.test is None and bundle.num_classes == 10
    assert bundle.input_shape == (3, 32, 32)
    counts = torch.bincount(torch.cat([bundle.train.targets, bundle.val.targets]))
    assert counts.tolist() == [5000] * 10
    # normalised with the training set's own statistics: about zero mean, unit std
    val_x = torch.stack([bundle.val[i][0] for i in range(0, 5000, 5)])
    assert val_x.mean((0, 2, 3)).abs().max() < 0.05
    assert (val_x.std((0, 2, 3)) - 1).abs().max() < 0.05
    train_loader, _ = make_loaders(bundle, 128, seed=0)
    start = time.perf_counter()
    seen = sum(len(y) for _, y in train_loader)
    rate = seen / (time.perf_counter() - start)
    assert seen == 45000
    assert rate > 3000, f"augmenting loader too slow: {rate:.0f} images/s"


@pytest.mark.slow
def test_real_mnist_split():
    path = _require("mnist")
    bundle = load_data(f"mnist:{path}", val_size=5000, seed=0)
    assert (len(bundle.train), len(bundle.val)) == (55000, 5000)
    assert bundle.test is None and bundle.num_classes == 10
    assert bundle.input_shape == (1, 28, 28)
    x, y = bundle.val[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(bundle.val.targets.tolist()) == set(range(10))
    val_x = torch.stack([bundle.val[i][0] for i in range(0, 5000, 5)])
    assert abs(float(val_x.mean())) < 0.05 and abs(float(val_x.std()) - 1) < 0.05
