import gzip

import numpy as np
import pytest
import torch

from dynamicnets.data import load_data
from dynamicnets.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from dynamicnets.errors import DataError


@pytest.mark.parametrize("name", ["x-images-idx3-ubyte", "x-images-idx3-ubyte.gz"])
def test_read_idx_round_trip(tmp_path, writers, name):
    values = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = writers.idx(tmp_path / name, values)
    out = read_idx(path, IMAGES_MAGIC)
    assert out.dtype == torch.uint8
    assert torch.equal(out, torch.from_numpy(values))


def test_wrong_magic_names_file_found_and_expected(tmp_path, writers):
    path = writers.idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4)), magic=2049)
    with pytest.raises(DataError) as err:
        read_idx(path, IMAGES_MAGIC)
    message = str(err.value)
    assert str(path) in message and "2049" in message and "2051" in message


@pytest.mark.parametrize("cut", [2, 10, 30])
def test_truncated_idx_names_file(tmp_path, writers, cut):
    path = writers.idx(tmp_path / "t", np.zeros((2, 4, 4)))
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(err.value)


def test_corrupt_gzip_names_file(tmp_path, writers):
    path = writers.idx(tmp_path / "l.gz", np.zeros(50))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="gzip") as err:
        read_idx(path, LABELS_MAGIC)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_with_test_split(tmp_path, writers, gz):
    arrays = writers.mnist(tmp_path, n_train=40, n_test=12, gz=gz)
    bundle = load_data(f"mnist:{tmp_path}", val_size=0.25, seed=0)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 12)
    images, labels = arrays["t10k"]
    x, y = bundle.test[5]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    expected = (torch.from_numpy(images[5]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[0], expected)
    assert int(y) == labels[5]
    train_images, train_labels = arrays["train"]
    i = int(bundle.val.indices[3])
    torch.testing.assert_close(
        bundle.val[3][0][0], (torch.from_numpy(train_images[i]).float() / 255 - 0.1307) / 0.3081
    )
    assert int(bundle.val[3][1]) == train_labels[i]


def test_mnist_without_test_files(tmp_path, writers):
    writers.mnist(tmp_path, n_train=20)
    assert load_data(f"mnist:{tmp_path}").test is None


def test_missing_label_file_is_named(tmp_path, writers):
    writers.mnist(tmp_path, n_train=20)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_data(f"mnist:{tmp_path}")


def test_half_present_test_split_names_missing_file(tmp_path, writers):
    writers.mnist(tmp_path, n_train=20, n_test=5)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_data(f"mnist:{tmp_path}")


def test_label_image_count_mismatch(tmp_path, writers):
    writers.mnist(tmp_path, n_train=20)
    writers.idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(19))
    with pytest.raises(DataError, match="20 images") as err:
        load_data(f"mnist:{tmp_path}")
    assert "train-labels-idx1-ubyte.gz" in str(err.value)
    assert "train-images-idx3-ubyte.gz" in str(err.value)


def test_swapped_files_report_wrong_magic(tmp_path, writers):
    writers.mnist(tmp_path, n_train=20, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    content = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(content)
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        load_data(f"mnist:{tmp_path}")


def test_plain_file_preferred_over_gz(tmp_path, writers):
    writers.mnist(tmp_path, n_train=20, gz=False)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"junk"))
    assert len(load_data(f"mnist:{tmp_path}", val_size=5).train) == 15
