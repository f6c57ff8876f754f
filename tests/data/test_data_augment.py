import pytest
import torch
import torch.nn.functional as F

from dynamicnets.data import load_data
from dynamicnets.data.augment import RandomCropFlip


def _candidates(pad: int) -> list[tuple[int, int, bool]]:
    """Every (top, left, flipped) the augmentation may choose."""
    offsets = range(2 * pad + 1)
    return [(t, l, f) for t in offsets for l in offsets for f in (False, True)]


def test_every_output_is_a_crop_or_mirrored_crop_of_the_padded_input():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 6, 5), dtype=torch.uint8)
    out = RandomCropFlip(padding=2)(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (2, 2, 2, 2))
    used = set()
    for b in range(len(images)):
        matches = []
        for top, left, flipped in _candidates(2):
            crop = padded[b, :, top : top + 6, left : left + 5]
            if flipped:
                crop = crop.flip(-1)
            if torch.equal(out[b], crop):
                matches.append((top, left, flipped))
        assert matches, f"sample {b} is not a crop of its padded input"
        used.update(matches)
    # offsets and flips actually vary
    assert len({m[:2] for m in used}) > 5 and {m[2] for m in used} == {False, True}


def test_no_padding_no_flip_is_identity():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(RandomCropFlip(padding=0, flip=False)(images), images)


def test_padding_is_black():
    images = torch.full((64, 1, 4, 4), 255, dtype=torch.uint8)
    torch.manual_seed(1)
    out = RandomCropFlip(padding=4, flip=False)(images)
    assert (out == 0).any() and (out == 255).any()


@pytest.fixture
def cifar_dir(tmp_path, writers):
    writers.cifar10(tmp_path, per_batch=8, n_test=4)
    return tmp_path


def _twice(dataset, i):
    return dataset[i][0], dataset[i][0]


def test_augmentation_only_on_training_split(cifar_dir):
    torch.manual_seed(0)
    bundle = load_data(f"cifar10:{cifar_dir}", val_size=8)
    assert any(not torch.equal(*_twice(bundle.train, i)) for i in range(len(bundle.train)))
    for split in (bundle.val, bundle.test):
        assert split.augment is None
        assert all(torch.equal(*_twice(split, i)) for i in range(len(split)))


def test_augment_false_gives_plain_training_samples(cifar_dir):
    plain = load_data(f"cifar10:{cifar_dir}", val_size=8, augment=False)
    augmented = load_data(f"cifar10:{cifar_dir}", val_size=8, augment=True)
    assert plain.train.augment is None
    assert all(torch.equal(*_twice(plain.train, i)) for i in range(len(plain.train)))
    torch.testing.assert_close(plain.val[0][0], augmented.val[0][0])


def test_batched_fetch_matches_single_fetch_without_augmentation(cifar_dir):
    bundle = load_data(f"cifar10:{cifar_dir}", val_size=8, augment=False)
    batch = bundle.train.__getitems__([3, 0, 7])
    for (x, y), i in zip(batch, [3, 0, 7]):
        torch.testing.assert_close(x, bundle.train[i][0])
        assert torch.equal(y, bundle.train[i][1])
