import numpy as np
import pytest
import torch
from PIL import Image

from dynamicnets.data import load_data
from dynamicnets.errors import DataError


def test_load_imagefolder(tmp_path, writers):
    written = writers.imagefolder(tmp_path, classes=("cat", "ant", "bee"), per_class=4, size=(6, 5))
    (tmp_path / "notes.txt").write_text("not a class")
    (tmp_path / "bee" / "readme.md").write_text("not an image")
    grey = np.full((5, 6), 200, dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "ant" / "grey.jpg")
    bundle = load_data(f"imagefolder:{tmp_path}", val_size=3)
    assert bundle.num_classes == 3 and bundle.input_shape == (3, 5, 6)
    assert bundle.test is None
    assert len(bundle.train) + len(bundle.val) == 13
    everything = bundle.train.samples  # (N, 3, H, W) uint8, classes sorted: ant, bee, cat
    labels = bundle.train.labels
    assert labels.tolist() == [0] * 5 + [1] * 4 + [2] * 4
    assert torch.equal(everything[5], torch.from_numpy(written["bee"][0]).permute(2, 0, 1))
    x, y = bundle.train[0]
    assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.dtype == torch.int64
    # the greyscale JPEG became three equal channels
    grey_rgb = everything[4].float()
    assert torch.equal(grey_rgb[0], grey_rgb[1]) and torch.equal(grey_rgb[1], grey_rgb[2])
    assert abs(float(grey_rgb.mean()) - 200) < 3


def test_inconsistent_size_names_file(tmp_path, writers):
    writers.imagefolder(tmp_path, size=(6, 5))
    odd = tmp_path / "cat" / "odd.png"
    Image.fromarray(np.zeros((7, 6, 3), dtype=np.uint8)).save(odd)
    with pytest.raises(DataError, match="share one size") as err:
        load_data(f"imagefolder:{tmp_path}")
    assert str(odd) in str(err.value) and "6x7" in str(err.value) and "6x5" in str(err.value)


@pytest.mark.parametrize("cut", [0, 20, 60])
def test_corrupt_image_names_file(tmp_path, writers, cut):
    writers.imagefolder(tmp_path, size=(16, 16))
    bad = tmp_path / "bee" / "1.png"
    bad.write_bytes(bad.read_bytes()[:cut])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        load_data(f"imagefolder:{tmp_path}")
    assert str(bad) in str(err.value)


def test_no_class_folders(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no class sub-folders") as err:
        load_data(f"imagefolder:{tmp_path}")
    assert str(tmp_path) in str(err.value)


def test_class_folder_without_images(tmp_path, writers):
    writers.imagefolder(tmp_path)
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "x.txt").write_text("")
    with pytest.raises(DataError, match="holds no image") as err:
        load_data(f"imagefolder:{tmp_path}")
    assert "dog" in str(err.value)
