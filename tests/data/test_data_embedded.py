import random

import numpy as np
import pytest
import torch

from dynamicnets.data import DataBundle, load_data


@pytest.fixture(scope="module")
def mnist1d():
    return load_data("mnist1d")


def test_digits_shapes_classes_dtypes():
    bundle = load_data("digits")
    assert isinstance(bundle, DataBundle)
    assert bundle.name == "digits"
    assert bundle.num_classes == 10
    assert bundle.input_shape == (1, 8, 8)
    assert len(bundle.train) + len(bundle.val) == 1797
    assert len(bundle.val) == round(0.1 * 1797)
    assert bundle.test is None
    x, y = bundle.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.shape == () and y.dtype == torch.int64
    xs = torch.stack([bundle.val[i][0] for i in range(len(bundle.val))])
    assert xs.min() >= 0.0 and xs.max() <= 1.0 and xs.max() == 1.0
    labels = torch.cat([bundle.train.targets, bundle.val.targets])
    assert set(labels.tolist()) == set(range(10))


def test_mnist1d_shapes_and_test_split(mnist1d):
    assert mnist1d.input_shape == (1, 40)
    assert mnist1d.num_classes == 10
    assert (len(mnist1d.train), len(mnist1d.val), len(mnist1d.test)) == (3600, 400, 1000)
    x, y = mnist1d.test[3]
    assert x.shape == (1, 40) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y) < 10
    assert set(mnist1d.test.targets.tolist()) == set(range(10))


def test_mnist1d_is_reproducible_and_leaves_global_rng_alone(mnist1d):
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    again = load_data("mnist1d")
    assert (random.random(), np.random.rand()) == expected
    torch.testing.assert_close(again.test[0][0], mnist1d.test[0][0])
    torch.testing.assert_close(again.train.targets, mnist1d.train.targets)
