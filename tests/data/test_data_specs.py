from pathlib import Path

import pytest

from dynamicnets.data import DATASETS, load_data, parse_spec
from dynamicnets.errors import DataError


def test_dataset_names():
    assert set(DATASETS) == {
        "digits", "mnist1d", "mnist", "cifar10", "cifar100", "imagefolder", "cluttered_mnist", "moving_mnist",
        "jump_task",
    }


def test_parse_spec_keeps_colons_in_path():
    assert parse_spec("cifar10:/a/b:c") == ("cifar10", Path("/a/b:c"))
    assert parse_spec(" Digits ") == ("digits", None)


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as err:
        load_data("svhn:/tmp")
    message = str(err.value)
    assert "svhn" in message
    for name in DATASETS:
        assert name in message


@pytest.mark.parametrize("spec", ["mnist", "cifar10", "cifar100:", "imagefolder"])
def test_spec_without_needed_path(spec):
    with pytest.raises(DataError, match="needs a directory"):
        load_data(spec)


@pytest.mark.parametrize("spec", ["digits:/tmp", "mnist1d:x"])
def test_builtin_spec_with_path(spec):
    with pytest.raises(DataError, match="takes no path"):
        load_data(spec)


@pytest.mark.parametrize("spec", ["", "   "])
def test_empty_spec(spec):
    with pytest.raises(DataError, match="empty"):
        load_data(spec)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "imagefolder"])
def test_missing_and_empty_directory(tmp_path, name):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as err:
        load_data(f"{name}:{missing}")
    assert str(missing) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="is empty") as err:
        load_data(f"{name}:{empty}")
    assert str(empty) in str(err.value)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        load_data(f"{name}:{a_file}")
