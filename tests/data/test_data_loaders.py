import pytest
import torch

from dynamicnets.data import load_data, make_eval_loader, make_loaders, set_epoch
from dynamicnets.errors import ConfigError


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", val_size=197, seed=0)


def _epoch(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_batches_shapes_and_dtypes(digits):
    train, val = make_loaders(digits, 64)
    x, y = next(iter(train))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    assert len(train) == 25 and len(val) == 4
    _, ys = _epoch(val)
    assert torch.equal(ys, digits.val.targets)  # in order


def test_drop_last(digits):
    train, _ = make_loaders(digits, 64, drop_last=True)
    assert len(train) == 1600 // 64
    assert all(len(y) == 64 for _, y in train)


def test_shuffle_is_seeded(digits):
    a, _ = make_loaders(digits, 100, seed=3)
    b, _ = make_loaders(digits, 100, seed=3)
    c, _ = make_loaders(digits, 100, seed=4)
    first_a, first_b, first_c = _epoch(a), _epoch(b), _epoch(c)
    assert torch.equal(first_a[0], first_b[0]) and torch.equal(first_a[1], first_b[1])
    assert not torch.equal(first_a[1], first_c[1])
    second_a, second_b = _epoch(a), _epoch(b)
    assert torch.equal(second_a[1], second_b[1])
    assert not torch.equal(first_a[1], second_a[1])  # a new order each epoch
    assert sorted(first_a[1].tolist()) == sorted(digits.train.targets.tolist())


def test_worker_processes_give_the_same_batches(digits):
    single, _ = make_loaders(digits, 128, seed=1)
    workers, _ = make_loaders(digits, 128, seed=1, num_workers=2)
    x0, y0 = _epoch(single)
    x1, y1 = _epoch(workers)
    assert torch.equal(y0, y1) and torch.equal(x0, x1)


def _positions(loader):
    """Dataset indices that a loader's sampler yields on this rank."""
    return list(iter(loader.sampler))


def test_distributed_shards_are_disjoint_and_cover(digits):
    shards, val_shards = [], []
    for rank in range(2):
        train, val = make_loaders(digits, 32, seed=0, rank=rank, world_size=2)
        set_epoch(train, 0)
        shards.append(_positions(train))
        val_shards.append(_positions(val))
        assert len(train) == -(-800 // 32)  # per-rank batches; global batch = 32 * 2
    assert set(shards[0]).isdisjoint(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(range(len(digits.train)))
    assert len(shards[0]) == len(shards[1]) == 800
    # 197 validation samples: padded to 198, one sample counted on both ranks
    assert set(val_shards[0]) | set(val_shards[1]) == set(range(197))
    assert len(val_shards[0]) == len(val_shards[1]) == 99


def test_set_epoch_reshuffles_distributed_sampler(digits):
    train, _ = make_loaders(digits, 32, seed=0, rank=1, world_size=2)
    set_epoch(train, 0)
    epoch0 = _positions(train)
    set_epoch(train, 1)
    epoch1 = _positions(train)
    set_epoch(train, 0)
    assert _positions(train) == epoch0 != epoch1


def test_set_epoch_is_harmless_without_distributed_sampler(digits):
    train, _ = make_loaders(digits, 32)
    set_epoch(train, 5)
    assert len(_epoch(train)[1]) == 1600


def test_eval_loader_for_test_split():
    bundle = load_data("mnist1d")
    loader = make_eval_loader(bundle.test, 250)
    x, y = _epoch(loader)
    assert x.shape == (1000, 1, 40) and torch.equal(y, bundle.test.targets)


@pytest.mark.parametrize(
    "kwargs", [dict(batch_size=0), dict(rank=2, world_size=2), dict(rank=-1), dict(num_workers=-1)]
)
def test_bad_arguments(digits, kwargs):
    args = dict(batch_size=8) | kwargs
    with pytest.raises(ConfigError):
        make_loaders(digits, args.pop("batch_size"), **args)
