import os
from pathlib import Path

import pytest
import torch

from dynamicnets.data import cluttered, cluttered_boxes, load_data, parse_spec
from dynamicnets.errors import DataError

REAL_MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"


def _load(root, options, **kwargs):
    return load_data(f"cluttered_mnist:{root}?{options}", val_size=None, **kwargs)


def _raw(root):
    return torch.load(next(root.glob("cluttered_*.pt")), weights_only=True)


def test_shapes_dtype_labels_and_scaling(tmp_path, writers):
    arrays = writers.mnist(tmp_path, n_train=20, n_test=6)
    bundle = _load(tmp_path, "canvas=40x50&variant=cluttered&fragments=4&seed=1")
    assert bundle.name == "cluttered_mnist" and bundle.num_classes == 10
    assert bundle.input_shape == (1, 40, 50)
    assert (len(bundle.train), len(bundle.test)) == (20, 6)
    x, y = bundle.train[3]
    assert x.shape == (1, 40, 50) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert int(y) == arrays["train"][1][3]
    assert torch.equal(bundle.test.labels, torch.from_numpy(arrays["t10k"][1]).long())
    raw = _raw(tmp_path)
    assert raw["train_images"].dtype == torch.uint8
    assert raw["train_images"].shape == (20, 1, 40, 50)
    torch.testing.assert_close(x, raw["train_images"][3].float() / 255)


def test_same_seed_same_arrays_other_seed_differs(tmp_path, writers):
    writers.mnist(tmp_path, n_train=16)
    a = _load(tmp_path, "canvas=48&seed=3&cache=" + str(tmp_path / "a")).train.samples
    b = _load(tmp_path, "canvas=48&seed=3&cache=" + str(tmp_path / "b")).train.samples
    c = _load(tmp_path, "canvas=48&seed=4&cache=" + str(tmp_path / "c")).train.samples
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("variant", ["translated", "cluttered"])
def test_digit_pixels_at_its_box(tmp_path, writers, variant):
    arrays = writers.mnist(tmp_path, n_train=12, n_test=3)
    spec = f"cluttered_mnist:{tmp_path}?canvas=50&variant={variant}&fragments=6"
    canvases = load_data(spec, val_size=None).train.samples[:, 0]
    train_boxes, test_boxes = cluttered_boxes(spec)
    assert train_boxes.shape == (12, 4) and test_boxes.shape == (3, 4)
    digits = torch.from_numpy(arrays["train"][0])
    assert bool(((train_boxes[:, 2:] - train_boxes[:, :2]) == 28).all())
    assert bool((train_boxes >= 0).all()) and bool((train_boxes <= 50).all())
    outside_nonzero = 0
    for i, (top, left, bottom, right) in enumerate(train_boxes.tolist()):
        inside = canvases[i, top:bottom, left:right]
        if variant == "translated":
            assert torch.equal(inside, digits[i])
        else:  # clutter can only brighten a pixel (pixel-wise max)
            assert bool((inside >= digits[i]).all())
        rest = canvases[i].clone()
        rest[top:bottom, left:right] = 0
        outside_nonzero += int(rest.count_nonzero())
    if variant == "translated":
        assert outside_nonzero == 0
    else:
        assert outside_nonzero > 0


def test_boxes_vary(tmp_path, writers):
    writers.mnist(tmp_path, n_train=30)
    boxes, test_boxes = cluttered_boxes(f"cluttered_mnist:{tmp_path}?canvas=60")
    assert test_boxes is None
    assert len(set(map(tuple, boxes[:, :2].tolist()))) > 5


def test_cache_reused(tmp_path, writers, monkeypatch):
    writers.mnist(tmp_path, n_train=10)
    first = _load(tmp_path, "canvas=32&variant=translated").train.samples
    cache = tmp_path / "cluttered_32x32_translated_0.pt"
    assert cache.is_file()
    mtime = os.stat(cache).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated despite the cache")

    monkeypatch.setattr(cluttered, "generate", fail)
    second = _load(tmp_path, "canvas=32&variant=translated").train.samples
    assert torch.equal(first, second)
    assert os.stat(cache).st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="regenerated"):  # another seed needs generating
        _load(tmp_path, "canvas=32&variant=translated&seed=1")


def test_corrupt_cache_names_file(tmp_path, writers):
    writers.mnist(tmp_path, n_train=4)
    (tmp_path / "cluttered_60x60_cluttered8_0.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cluttered_60x60_cluttered8_0.pt"):
        _load(tmp_path, "")


@pytest.mark.parametrize(
    "options, key",
    [
        ("canvas=27", "canvas"),
        ("canvas=60x20", "canvas"),
        ("canvas=big", "canvas"),
        ("variant=noisy", "variant"),
        ("fragments=-1", "fragments"),
        ("colour=red", "colour"),
    ],
)
def test_bad_options_name_the_key(tmp_path, options, key):
    with pytest.raises(DataError, match=key):
        parse_spec(f"cluttered_mnist:{tmp_path}?{options}")


def test_parse_spec_strips_options(tmp_path):
    assert parse_spec(f"cluttered_mnist:{tmp_path}?canvas=60") == ("cluttered_mnist", tmp_path)
    with pytest.raises(DataError, match="needs a directory"):
        parse_spec("cluttered_mnist:?canvas=60")


@pytest.mark.slow
@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="needs the real MNIST IDX files")
def test_real_mnist_cluttered(tmp_path):
    spec = f"cluttered_mnist:{REAL_MNIST}?canvas=60&variant=cluttered&cache={tmp_path}"
    bundle = load_data(spec, val_size=5000)
    assert bundle.input_shape == (1, 60, 60)
    assert len(bundle.train) + len(bundle.val) == 60000
    boxes, _ = cluttered_boxes(spec)
    assert boxes.shape == (60000, 4)
