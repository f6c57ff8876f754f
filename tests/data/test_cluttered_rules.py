"""Cluttered MNIST beyond the default canvas: 100x100 canvases, the validation split carved
as for every other spec, the t10k files as the test split, digits of any square size
(small canvases for learning tests) and clear errors for a canvas smaller than a digit."""
import pytest
import torch

from dynamicnets.data import cluttered, cluttered_boxes, load_data
from dynamicnets.errors import DataError


def test_a_100x100_canvas_holds_each_digit_at_its_box(tmp_path, writers):
    arrays = writers.mnist(tmp_path, n_train=12, n_test=4)
    spec = f"cluttered_mnist:{tmp_path}?canvas=100&variant=translated"
    bundle = load_data(spec, val_size=None)
    assert bundle.input_shape == (1, 100, 100)
    boxes, test_boxes = cluttered_boxes(spec)
    assert test_boxes.shape == (4, 4) and bool((boxes[:, 2:] <= 100).all())
    assert len(set(map(tuple, boxes[:, :2].tolist()))) > 6  # positions spread over the canvas
    canvases = bundle.train.samples[:, 0]  # stored uint8, scaled when read
    for i, (top, left, bottom, right) in enumerate(boxes.tolist()):
        assert torch.equal(canvases[i, top:bottom, left:right], torch.from_numpy(arrays["train"][0][i]))
        assert int(canvases[i].sum()) == int(canvases[i, top:bottom, left:right].sum())  # nothing else


def test_validation_split_and_test_split_follow_the_mnist_rules(tmp_path, writers):
    arrays = writers.mnist(tmp_path, n_train=40, n_test=6)
    plain = load_data(f"mnist:{tmp_path}", val_size=0.25, seed=3)
    canvas = load_data(f"cluttered_mnist:{tmp_path}?canvas=40", val_size=0.25, seed=3)
    assert torch.equal(canvas.train.indices, plain.train.indices)
    assert torch.equal(canvas.val.indices, plain.val.indices)
    assert torch.equal(canvas.train.labels, plain.train.labels)
    other = load_data(f"cluttered_mnist:{tmp_path}?canvas=40", val_size=0.25, seed=4)
    assert not torch.equal(other.val.indices, canvas.val.indices)  # the split's seed, not the canvases'
    assert torch.equal(canvas.test.labels, torch.from_numpy(arrays["t10k"][1]).long())
    assert torch.equal(load_data(f"cluttered_mnist:{tmp_path}?canvas=40", val_size=8).val.indices,
                       load_data(f"mnist:{tmp_path}", val_size=8).val.indices)


def test_small_square_digits_make_small_cluttered_canvases():
    digits = torch.randint(1, 256, (30, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    options = cluttered.ClutterOptions(24, 20, "cluttered", 5, 0)
    canvases, boxes = cluttered.generate(digits, options, torch.Generator().manual_seed(0))
    assert canvases.shape == (30, 24, 20)
    assert bool(((boxes[:, 2:] - boxes[:, :2]) == 8).all()) and bool((boxes[:, 2] <= 24).all())
    outside = 0
    for i, (top, left, bottom, right) in enumerate(boxes.tolist()):
        assert bool((canvases[i, top:bottom, left:right] >= digits[i]).all())
        rest = canvases[i].clone()
        rest[top:bottom, left:right] = 0
        outside += int(rest.count_nonzero())
    assert outside > 0  # 4x4 fragments of other digits


@pytest.mark.parametrize("shape, match", [((5, 28, 28), "canvas=27x60"), ((5, 28, 20), "square")])
def test_a_canvas_smaller_than_a_digit_names_the_canvas(shape, match):
    digits = torch.zeros(shape, dtype=torch.uint8)
    with pytest.raises(DataError, match=match):
        cluttered.generate(digits, cluttered.ClutterOptions(27, 60), torch.Generator())


@pytest.mark.parametrize("options", ["canvas=20", "canvas=100x27"])
def test_a_spec_canvas_under_28_names_the_option(tmp_path, options):
    with pytest.raises(DataError, match="canvas"):
        load_data(f"cluttered_mnist:{tmp_path}?{options}")
