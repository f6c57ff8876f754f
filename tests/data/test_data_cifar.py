import os
import pickle

import numpy as np
import pytest
import torch

from dynamicnets.data import load_data
from dynamicnets.errors import DataError

CIFAR10_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
CIFAR10_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)


def normalised(row: np.ndarray, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    return (torch.from_numpy(row.reshape(3, 32, 32)).float() / 255 - mean) / std


def test_load_cifar10_with_test_split(tmp_path, writers):
    written = writers.cifar10(tmp_path, per_batch=8, n_test=6)
    bundle = load_data(f"cifar10:{tmp_path}", val_size=10, seed=0)
    assert bundle.name == "cifar10" and bundle.num_classes == 10
    assert bundle.input_shape == (3, 32, 32)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 6)
    x, y = bundle.test[2]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, normalised(written["test_batch"][b"data"][2]))
    assert int(y) == written["test_batch"][b"labels"][2]
    # batches are concatenated in order data_batch_1..5
    rows = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    for k in range(len(bundle.val)):
        i = int(bundle.val.indices[k])
        torch.testing.assert_close(bundle.val[k][0], normalised(rows[i]))
        assert int(bundle.val[k][1]) == labels[i]


def test_cifar10_without_meta_or_test(tmp_path, writers):
    writers.cifar10(tmp_path, meta=False)
    bundle = load_data(f"cifar10:{tmp_path}", val_size=0.25)
    assert bundle.test is None and len(bundle.train) == 30


def test_load_cifar100_with_test_split(tmp_path, writers):
    written = writers.cifar100(tmp_path, n_train=40, n_test=7)
    bundle = load_data(f"cifar100:{tmp_path}", val_size=0.1)
    assert bundle.num_classes == 100 and bundle.input_shape == (3, 32, 32)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (36, 4, 7)
    assert bundle.test.targets.tolist() == written["test"][b"fine_labels"]
    mean = torch.tensor([0.5071, 0.4865, 0.4409]).view(3, 1, 1)
    std = torch.tensor([0.2673, 0.2564, 0.2762]).view(3, 1, 1)
    expected = normalised(written["test"][b"data"][0], mean, std)
    torch.testing.assert_close(bundle.test[0][0], expected)


def test_missing_batch_is_named(tmp_path, writers):
    writers.cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_data(f"cifar10:{tmp_path}")


def test_cifar100_missing_train_is_named(tmp_path, writers):
    writers.cifar100(tmp_path, n_test=4)
    (tmp_path / "train").unlink()
    with pytest.raises(DataError, match="'train'"):
        load_data(f"cifar100:{tmp_path}")


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch", "batches.meta"])
def test_truncated_pickle_names_file(tmp_path, writers, name):
    writers.cifar10(tmp_path, n_test=4)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        load_data(f"cifar10:{tmp_path}")
    assert str(path) in str(err.value)


def test_garbage_file_names_file(tmp_path, writers):
    writers.cifar10(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(os.urandom(500))
    with pytest.raises(DataError, match="data_batch_1"):
        load_data(f"cifar10:{tmp_path}")


def _rewrite(path, edit):
    with open(path, "rb") as f:
        content = pickle.load(f, encoding="bytes")
    edit(content)
    with open(path, "wb") as f:
        pickle.dump(content, f)


def test_wrong_keys(tmp_path, writers):
    writers.cifar100(tmp_path)
    _rewrite(tmp_path / "train", lambda c: c.pop(b"fine_labels"))
    with pytest.raises(DataError, match="fine_labels") as err:
        load_data(f"cifar100:{tmp_path}")
    assert "train" in str(err.value) and "coarse_labels" in str(err.value)


def test_cifar10_layout_read_as_cifar100_says_what_is_missing(tmp_path, writers):
    writers.cifar10(tmp_path)
    with pytest.raises(DataError, match="missing file 'train'"):
        load_data(f"cifar100:{tmp_path}")


def test_label_count_mismatch(tmp_path, writers):
    writers.cifar10(tmp_path)
    _rewrite(tmp_path / "data_batch_4", lambda c: c[b"labels"].pop())
    with pytest.raises(DataError, match="8 images but 7 labels") as err:
        load_data(f"cifar10:{tmp_path}")
    assert "data_batch_4" in str(err.value)


def test_wrong_data_shape(tmp_path, writers):
    writers.cifar10(tmp_path)
    _rewrite(tmp_path / "data_batch_1", lambda c: c.update({b"data": c[b"data"][:, :100]}))
    with pytest.raises(DataError, match="expected uint8"):
        load_data(f"cifar10:{tmp_path}")


def test_out_of_range_label(tmp_path, writers):
    writers.cifar10(tmp_path)
    _rewrite(tmp_path / "data_batch_5", lambda c: c[b"labels"].__setitem__(0, 10))
    with pytest.raises(DataError, match="data_batch_5"):
        load_data(f"cifar10:{tmp_path}")


def test_meta_with_wrong_class_count(tmp_path, writers):
    writers.cifar10(tmp_path)
    _rewrite(tmp_path / "batches.meta", lambda c: c[b"label_names"].pop())
    with pytest.raises(DataError, match="9 classes, expected 10"):
        load_data(f"cifar10:{tmp_path}")


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, ("pwned",))


def test_pickle_with_foreign_global_is_refused(tmp_path, writers, monkeypatch):
    writers.cifar10(tmp_path)
    monkeypatch.chdir(tmp_path)
    _rewrite(tmp_path / "data_batch_1", lambda c: c.update({b"extra": _RunsCode()}))
    with pytest.raises(DataError, match="refusing to load global"):
        load_data(f"cifar10:{tmp_path}")
    assert not (tmp_path / "pwned").exists()
