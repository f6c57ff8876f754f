import pytest
import torch

from dynamicnets.data import load_data
from dynamicnets.data.split import split_indices
from dynamicnets.errors import DataError


@pytest.mark.parametrize("val_size, expected", [(0.1, 10), (0.25, 25), (7, 7), (1, 1)])
def test_split_sizes_disjoint_and_complete(val_size, expected):
    train, val = split_indices(100, val_size, seed=3)
    assert len(val) == expected and len(train) == 100 - expected
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))


def test_split_is_seeded():
    a = split_indices(1000, 0.2, seed=5)
    b = split_indices(1000, 0.2, seed=5)
    c = split_indices(1000, 0.2, seed=6)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])


def test_bundle_split_same_seed_same_split():
    a = load_data("digits", val_size=200, seed=1)
    b = load_data("digits", val_size=200, seed=1)
    c = load_data("digits", val_size=200, seed=2)
    assert len(a.val) == 200 and len(a.train) == 1797 - 200
    assert torch.equal(a.val.indices, b.val.indices)
    assert not torch.equal(a.val.indices, c.val.indices)
    assert set(a.val.indices.tolist()).isdisjoint(a.train.indices.tolist())
    torch.testing.assert_close(a.val[17][0], b.val[17][0])


def test_splits_share_storage_instead_of_copying():
    bundle = load_data("digits")
    assert bundle.train.samples.data_ptr() == bundle.val.samples.data_ptr()


@pytest.mark.parametrize("bad", [0, 100, 150, -1, 0.0, 1.0, 1.5, "0.1", True, None])
def test_bad_val_size_raises(bad):
    with pytest.raises(DataError, match="val_size"):
        split_indices(100, bad, seed=0)
