import os

import pytest
import torch

from dynamicnets.data import load_data, parse_spec
from dynamicnets.data import moving_digits
from dynamicnets.data.cluttered import DIGIT
from dynamicnets.errors import DataError


def _load(root, options, **kwargs):
    return load_data(f"moving_mnist:{root}?{options}", val_size=None, **kwargs)


def _raw(root):
    return torch.load(next(root.glob("moving_mnist_*.pt")), weights_only=True)


def test_shapes_dtype_labels_and_scaling(tmp_path, writers):
    arrays = writers.mnist(tmp_path, n_train=12, n_test=5)
    bundle = _load(tmp_path, "frames=6&size=32x40&visible=2&occluders=1&seed=1")
    assert bundle.name == "moving_mnist" and bundle.num_classes == 10
    assert bundle.input_shape == (1, 6, 32, 40)
    assert (len(bundle.train), len(bundle.test)) == (12, 5)
    x, y = bundle.train[3]
    assert x.shape == (1, 6, 32, 40) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert int(y) == arrays["train"][1][3]
    assert torch.equal(bundle.test.labels, torch.from_numpy(arrays["t10k"][1]).long())
    raw = _raw(tmp_path)
    assert raw["train_videos"].dtype == torch.uint8 and raw["train_videos"].shape == (12, 1, 6, 32, 40)
    assert raw["train_hidden"].shape == (12, 6) and raw["test_hidden"].shape == (5, 6)
    torch.testing.assert_close(x, raw["train_videos"][3].float() / 255)


def test_videos_option_caps_the_count(tmp_path, writers):
    writers.mnist(tmp_path, n_train=10, n_test=4)
    bundle = _load(tmp_path, "frames=3&size=30&videos=7")
    assert (len(bundle.train), len(bundle.test)) == (7, 4)


def test_same_seed_same_videos_other_seed_differs(tmp_path, writers):
    writers.mnist(tmp_path, n_train=8)
    opts = "frames=5&size=36&seed={}&cache=" + str(tmp_path)
    a = _load(tmp_path, opts.format(3) + "/a").train.samples
    b = _load(tmp_path, opts.format(3) + "/b").train.samples
    c = _load(tmp_path, opts.format(4) + "/c").train.samples
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_digit_visible_exactly_in_the_visible_frames():
    """Without distractors, a visible frame holds the digit itself at its place and a hidden
    frame a noise block over the digit's box; the visible count is exact per video."""
    generator = torch.Generator().manual_seed(0)
    digits = torch.zeros(9, DIGIT, DIGIT, dtype=torch.uint8)
    digits[:, 4:24, 10:18] = 200  # a bar: the noise cannot reproduce it
    options = moving_digits.MovingOptions(frames=8, height=40, width=44, visible=3, occluders=0)
    videos, hidden = moving_digits.generate(digits, options, generator)
    assert videos.shape == (9, 1, 8, 40, 44)
    assert bool((hidden.sum(dim=1) == 5).all())
    assert len({tuple(h.tolist()) for h in hidden}) > 1  # the subsets differ per video
    for n in range(9):
        for t in range(8):
            frame = videos[n, 0, t]
            bar = (frame == 200).sum()
            if hidden[n, t]:
                assert int(bar) < 20  # only noise can hit 200, here and there
            else:
                assert int(bar) == 20 * 8
                ys, xs = torch.nonzero(frame).unbind(1)
                assert int(ys.max() - ys.min()) == 19 and int(xs.max() - xs.min()) == 7


def test_digit_moves_and_bounces_inside():
    generator = torch.Generator().manual_seed(1)
    corners = moving_digits.bounce(50, 30, 20, 12, generator)
    assert corners.shape == (50, 30, 2)
    assert int(corners[..., 0].min()) >= 0 and int(corners[..., 0].max()) <= 20
    assert int(corners[..., 1].min()) >= 0 and int(corners[..., 1].max()) <= 12
    step = (corners[:, 1:] - corners[:, :-1]).abs().sum(dim=-1)
    assert bool((step > 0).float().mean() > 0.9)  # it moves (speed >= 2 pixels per frame)
    assert int(step.max()) <= 2 * 6  # no jump larger than the speed allows
    reached = corners[..., 0].max(dim=1).values == 20
    assert bool(reached.any())  # some digits reach the border and come back


def test_occluders_add_noise_outside_the_digit(tmp_path, writers):
    writers.mnist(tmp_path, n_train=6)
    quiet = _load(tmp_path, "frames=4&size=48&visible=4&occluders=0").train.samples
    noisy = _load(tmp_path, "frames=4&size=48&visible=4&occluders=3").train.samples
    assert int(noisy.count_nonzero()) > int(quiet.count_nonzero())


def test_gray_fill_hides_the_digit_under_flat_gray():
    generator = torch.Generator().manual_seed(2)
    digits = torch.full((4, DIGIT, DIGIT), 255, dtype=torch.uint8)
    options = moving_digits.MovingOptions(frames=5, height=30, width=30, visible=1, occluders=1, fill="gray")
    videos, hidden = moving_digits.generate(digits, options, generator)
    assert set(videos.unique().tolist()) <= {0, 128, 255}
    for n in range(4):
        for t in range(5):
            white, gray = int((videos[n, 0, t] == 255).sum()), int((videos[n, 0, t] == 128).sum())
            if hidden[n, t]:
                assert white == 0 and gray >= DIGIT * DIGIT
            else:  # a 14x14 square may cover part of the digit, never all of it
                assert white >= DIGIT * DIGIT - 14 * 14


def test_cache_reused(tmp_path, writers, monkeypatch):
    writers.mnist(tmp_path, n_train=5)
    first = _load(tmp_path, "frames=3&size=30").train.samples
    cache = tmp_path / "moving_mnist_30x30_t3_v3_o2_n6000_0.pt"
    assert cache.is_file()
    mtime = os.stat(cache).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated despite the cache")

    monkeypatch.setattr(moving_digits, "generate", fail)
    assert torch.equal(first, _load(tmp_path, "frames=3&size=30").train.samples)
    assert os.stat(cache).st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="regenerated"):
        _load(tmp_path, "frames=3&size=30&seed=2")


def test_corrupt_cache_names_file(tmp_path, writers):
    writers.mnist(tmp_path, n_train=4)
    (tmp_path / "moving_mnist_48x48_t16_v4_o2_n6000_0.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="moving_mnist_48x48_t16_v4_o2_n6000_0.pt"):
        _load(tmp_path, "")


@pytest.mark.parametrize(
    "options, key",
    [
        ("size=27", "size"),
        ("size=48x20", "size"),
        ("size=big", "size"),
        ("frames=0", "frames"),
        ("frames=4&visible=5", "visible"),
        ("visible=0", "visible"),
        ("occluders=-1", "occluders"),
        ("videos=0", "videos"),
        ("seed=x", "seed"),
        ("fill=red", "fill"),
        ("speed=3", "speed"),
    ],
)
def test_bad_options_name_the_key(tmp_path, options, key):
    with pytest.raises(DataError, match=key):
        parse_spec(f"moving_mnist:{tmp_path}?{options}")


def test_canvas_smaller_than_a_digit_says_so(tmp_path):
    with pytest.raises(DataError, match="28x28 digit"):
        parse_spec(f"moving_mnist:{tmp_path}?size=20")


def test_parse_spec_strips_options(tmp_path):
    assert parse_spec(f"moving_mnist:{tmp_path}?frames=8") == ("moving_mnist", tmp_path)
    with pytest.raises(DataError, match="needs a directory"):
        parse_spec("moving_mnist:?frames=8")
