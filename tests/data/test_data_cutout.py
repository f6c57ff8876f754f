"""Cutout: one clipped square per image, filled with the data set's mean, training split only."""
import pytest
import torch

from dynamicnets.data import load_data
from dynamicnets.data.augment import Augmentations, Cutout, RandomCropFlip, cutout_fill
from dynamicnets.data.preprocessing import CIFAR10_STATS
from dynamicnets.errors import ConfigError, DataError
from dynamicnets.training.config import TrainConfig


def _square_bounds(changed: torch.Tensor) -> tuple[int, int, int, int]:
    rows = changed.any(dim=1).nonzero().flatten()
    cols = changed.any(dim=0).nonzero().flatten()
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_each_image_loses_one_clipped_square_filled_per_channel():
    torch.manual_seed(0)
    images = torch.randint(10, 250, (200, 3, 12, 10), dtype=torch.uint8)
    out = Cutout(4, fill=(1.0, 2.0, 3.0))(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    sizes, clipped = set(), 0
    for b in range(len(images)):
        changed = (out[b] != images[b]).any(dim=0)
        top, bottom, left, right = _square_bounds(changed)
        height, width = bottom - top + 1, right - left + 1
        # the whole rectangle changed (a square, clipped at the border), nothing else
        assert int(changed.sum()) == height * width and height <= 4 and width <= 4
        assert (top == 0 or bottom == 11 or height == 4) and (left == 0 or right == 9 or width == 4)
        for c, value in enumerate((1, 2, 3)):
            assert (out[b, c][changed] == value).all()
        sizes.add((height, width))
        clipped += (height, width) != (4, 4)
    assert (4, 4) in sizes and clipped > 0  # interior squares and squares clipped at an edge


def test_positions_vary_and_input_is_untouched():
    torch.manual_seed(1)
    images = torch.zeros(64, 1, 16, 16)
    before = images.clone()
    out = Cutout(3, fill=(1.0,))(images)
    assert torch.equal(images, before)
    centres = {tuple(int(v) for v in (out[b, 0] == 1).nonzero().float().mean(0)) for b in range(64)}
    assert len(centres) > 20


def test_fill_is_the_mean_in_stored_units():
    mean, _ = CIFAR10_STATS
    fill = cutout_fill(1 / 255, mean, 3, torch.uint8)
    assert fill == tuple(float(round(m * 255)) for m in mean)
    assert cutout_fill(1.0, None, 2, torch.float32) == (0.0, 0.0)
    assert cutout_fill(0.5, (0.25,), 1, torch.float32) == (0.5,)


def test_bad_sizes_and_channel_mismatch():
    for size in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="cutout size"):
            Cutout(size, fill=(0.0,))
    with pytest.raises(ValueError, match="1 fill values for 3-channel"):
        Cutout(2, fill=(0.0,))(torch.zeros(1, 3, 4, 4))


def test_chain_applies_steps_in_order():
    images = torch.arange(16.0).view(1, 1, 4, 4)
    chain = Augmentations(lambda x: x + 1, lambda x: x * 2)
    assert torch.equal(chain(images), (images + 1) * 2)
    assert "Augmentations(" in repr(chain)


@pytest.fixture
def cifar_dir(tmp_path, writers):
    writers.cifar10(tmp_path, per_batch=8, n_test=4)
    return tmp_path


def test_load_data_cuts_only_training_images_to_about_zero(cifar_dir):
    torch.manual_seed(0)
    bundle = load_data(f"cifar10:{cifar_dir}", val_size=8, cutout=8)
    assert isinstance(bundle.train.augment, Augmentations)
    assert isinstance(bundle.train.augment.steps[0], RandomCropFlip) and bundle.train.augment.steps[1].size == 8
    x, _ = bundle.train.fetch(torch.arange(len(bundle.train)))
    near_zero = (x.abs() < 0.01).all(dim=1)  # every channel at the mean: cut out
    per_image = near_zero.flatten(1).sum(1)
    assert (per_image >= 16).all() and (per_image <= 64 + 4).all()  # at least a clipped 8x8 corner (4x4)
    assert bundle.val.augment is None and bundle.test.augment is None
    assert load_data(f"cifar10:{cifar_dir}", val_size=8, cutout=8, augment=False).train.augment is None


def test_load_data_refuses_cutout_on_non_images_and_bad_sizes(cifar_dir):
    with pytest.raises(DataError, match=r"cutout needs images .*'mnist1d'.*\(1, 40\)"):
        load_data("mnist1d", cutout=4)
    with pytest.raises(DataError, match="cutout for 'cifar10:.*' must be an integer >= 0"):
        load_data(f"cifar10:{cifar_dir}", val_size=8, cutout=-1)
    digits = load_data("digits", cutout=3)  # images without their own augmentation: Cutout alone
    assert isinstance(digits.train.augment, Cutout) and digits.train.augment.fill == (0.0,)


def test_train_config_checks_cutout():
    assert TrainConfig(cutout=16).cutout == 16
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="cutout"):
            TrainConfig(cutout=bad)
    with pytest.raises(ConfigError, match="cutout.*augment is false"):
        TrainConfig(cutout=4, augment=False)


def test_trainer_trains_with_cutout_and_records_it(tmp_path):
    from dynamicnets.training import Trainer
    from dynamicnets.training.checkpoint import load_checkpoint

    trainer = Trainer(TrainConfig(name="cut", model="small_cnn", data="digits", epochs=1, batch_size=32, cutout=3,
                                  max_steps_per_epoch=2, out_dir=str(tmp_path), progress=False, threads=1))
    assert isinstance(trainer.bundle.train.augment, Cutout) and trainer.bundle.train.augment.size == 3
    trainer.fit()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["config"]["cutout"] == 3
