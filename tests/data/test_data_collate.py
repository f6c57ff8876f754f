"""`collate_batch`: in-memory batches reach the loader as fetched, equal to `default_collate`'s."""
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset, default_collate

from dynamicnets.data.augment import RandomCropFlip
from dynamicnets.data.in_memory import FetchedBatch, InMemoryDataset, collate_batch


def dataset(augment=None) -> InMemoryDataset:
    g = torch.Generator().manual_seed(0)
    samples = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=g)
    return InMemoryDataset(samples, torch.arange(20) % 3, scale=1 / 255, mean=[0.5] * 3, std=[0.25] * 3,
                           augment=augment)


def test_collate_returns_the_fetched_tensors_without_copying_and_equal_to_default_collate():
    ds = dataset()
    fetched = ds.__getitems__([3, 1, 4, 1, 5])
    assert isinstance(fetched, FetchedBatch) and len(fetched) == 5
    x, y = collate_batch(fetched)
    assert x.data_ptr() == fetched.x.data_ptr()  # no restacking
    ref_x, ref_y = default_collate(list(fetched))
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y) and y.dtype == torch.int64
    for i, (xi, yi) in enumerate(fetched):  # still one (x, y) pair per index
        assert torch.equal(xi, x[i]) and yi == y[i]


def test_loader_batches_match_the_per_sample_default_collate_with_augmentation_and_subsets():
    for wrap in (lambda d: d, lambda d: Subset(d, list(range(2, 19)))):
        ds = wrap(dataset(RandomCropFlip(padding=2)))
        batches = {}
        for name, collate in (("fast", collate_batch), ("default", lambda b: default_collate(list(b)))):
            torch.manual_seed(1)
            loader = DataLoader(ds, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(0),
                                collate_fn=collate)
            batches[name] = list(loader)
        assert len(batches["fast"]) == len(batches["default"]) == -(-len(ds) // 6)
        for (xa, ya), (xb, yb) in zip(batches["fast"], batches["default"]):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_other_datasets_fall_back_to_default_collate():
    ds = TensorDataset(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 2]))
    x, y = collate_batch([ds[0], ds[2]])
    assert torch.equal(x, torch.tensor([[0.0, 1.0], [4.0, 5.0]])) and torch.equal(y, torch.tensor([0, 2]))
