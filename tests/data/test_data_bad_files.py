"""Damaged or unusual data files: refused with the file (and index) named, or read right."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dynamicnets.data import load_data
from dynamicnets.data.cifar import read_cifar_batch
from dynamicnets.data.idx import IMAGES_MAGIC, read_idx
from dynamicnets.data.imagefolder import read_image_folder
from dynamicnets.data.labels import check_labels
from dynamicnets.errors import DataError


def test_idx_header_whose_sizes_overflow_int64_is_a_data_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    # 2**32 * 2**32 * 1 wraps to 0 in int64 arithmetic: the size check passed and reshape failed
    dims = (2**32 - 1, 2**32 - 1, 2**32 - 1)
    path.write_bytes(IMAGES_MAGIC.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims))
    with pytest.raises(DataError, match="train-images-idx3-ubyte' is truncated"):
        read_idx(path, IMAGES_MAGIC)


def test_mnist_label_outside_the_ten_classes_names_file_and_index(tmp_path, writers):
    arrays = writers.mnist(tmp_path, n_train=30, gz=False)
    labels = arrays["train"][1].copy()
    labels[12] = 200
    writers.idx(tmp_path / "train-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte': label 200 at index 12 is outside the 10"):
        load_data(f"mnist:{tmp_path}")


def test_mnist_keeps_ten_classes_whatever_labels_it_sees(tmp_path, writers):
    arrays = writers.mnist(tmp_path, n_train=30, gz=False)
    writers.idx(tmp_path / "train-labels-idx1-ubyte", np.zeros_like(arrays["train"][1]))
    assert load_data(f"mnist:{tmp_path}").num_classes == 10


def test_check_labels_compares_unsigned_labels_without_wrapping():
    with pytest.raises(DataError, match=r"f: label 18446744073709551615 at index 2 .*1 label\(s\)"):
        check_labels(np.array([0, 1, 2**64 - 1], dtype=np.uint64), 10, "f")
    with pytest.raises(DataError, match="label -1 at index 0"):
        check_labels(torch.tensor([-1, 3]), 10, "f")
    check_labels(np.array([], dtype=np.int64), 10, "f")


def _batch(path, labels, n_images):
    path.write_bytes(pickle.dumps({b"data": np.zeros((n_images, 3072), np.uint8), b"labels": labels}, protocol=4))
    return path


def test_cifar_empty_label_list_and_uint64_labels_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="has 3 images but an empty label list"):
        read_cifar_batch(_batch(tmp_path / "a", [], 3), b"labels", 10)
    with pytest.raises(DataError, match="holds no images"):
        read_cifar_batch(_batch(tmp_path / "b", [], 0), b"labels", 10)
    with pytest.raises(DataError, match="label 18446744073709551615 at index 1"):
        read_cifar_batch(_batch(tmp_path / "c", np.array([1, 2**64 - 1], np.uint64), 2), b"labels", 10)
    with pytest.raises(DataError, match="holds float64 values"):
        read_cifar_batch(_batch(tmp_path / "d", [0.5, 1.0], 2), b"labels", 10)


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    (tmp_path / "a").mkdir()
    Image.fromarray(values).save(tmp_path / "a" / "deep.png")
    Image.fromarray(np.array([[0, 1, 128, 255]], np.uint8)).convert("RGB").save(tmp_path / "a" / "plain.png")
    images, _, _ = read_image_folder(tmp_path)
    assert images.shape == (2, 3, 1, 4)
    assert images[0, :, 0].tolist() == [[0, 1, 128, 255]] * 3  # deep.png: not all white
    assert images[1, :, 0].tolist() == [[0, 1, 128, 255]] * 3


def test_thirty_two_bit_image_is_refused_with_its_name(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "a" / "float.tiff")
    (tmp_path / "a" / "float.tiff").rename(tmp_path / "a" / "float.png")  # a TIFF named .png
    with pytest.raises(DataError, match=r"float.png' has floating-point pixels"):
        read_image_folder(tmp_path)
