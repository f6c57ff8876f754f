"""The preprocessing a model was trained with: recorded, derived for a spec, applied to any source."""
import pytest
import torch

from dynamicnets.data import load_data
from dynamicnets.data.in_memory import InMemoryDataset
from dynamicnets.data.preprocessing import (
    CIFAR10_STATS,
    Preprocessing,
    conform,
    preprocessing_for_spec,
    preprocessing_of,
)
from dynamicnets.errors import CheckpointError, DataError


def _spec_sources(tmp_path, writers):
    writers.cifar10(tmp_path / "c10", per_batch=4)
    writers.cifar100(tmp_path / "c100", n_train=20)
    writers.mnist(tmp_path / "mnist", n_train=12)
    writers.imagefolder(tmp_path / "folder")
    return ["digits", "mnist1d", f"cifar10:{tmp_path / 'c10'}", f"cifar100:{tmp_path / 'c100'}",
            f"mnist:{tmp_path / 'mnist'}", f"imagefolder:{tmp_path / 'folder'}"]


def test_the_table_for_old_checkpoints_matches_what_every_reader_does(tmp_path, writers):
    for spec in _spec_sources(tmp_path, writers):
        bundle = load_data(spec, val_size=2, augment=False)
        derived = preprocessing_for_spec(spec, bundle.input_shape)
        assert bundle.preprocessing == derived or bundle.preprocessing.same_transform(derived), spec
        assert bundle.preprocessing.input_shape == derived.input_shape, spec


def test_round_trip_through_plain_values():
    prep = preprocessing_for_spec("cifar10", (3, 32, 32))
    plain = prep.to_dict()
    assert all(isinstance(v, (str, float, list)) for v in plain.values())
    assert Preprocessing.from_dict(plain) == prep
    assert "/ 255" in prep.describe() and "0.4914" in prep.describe() and "(3, 32, 32)" in prep.describe()


@pytest.mark.parametrize("bad", [None, {"storage": "uint8"}, {"storage": "int16", "scale": 1.0, "mean": None,
                                                                 "std": None, "input_shape": [3]}])
def test_a_malformed_record_names_the_checkpoint(bad):
    with pytest.raises((CheckpointError, DataError), match="preprocessing|storage"):
        Preprocessing.from_dict(bad, source="old.pt")


def test_unknown_spec_is_an_error_not_a_guess():
    with pytest.raises(DataError, match="svhn"):
        preprocessing_for_spec("svhn:DIR", (3, 32, 32))


def test_conform_re_reads_the_same_pixels_with_the_trained_statistics():
    pixels = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(5)
    folder = InMemoryDataset(pixels, labels, scale=1 / 255)  # how an image folder reads
    cifar = InMemoryDataset(pixels, labels, scale=1 / 255, mean=CIFAR10_STATS[0], std=CIFAR10_STATS[1])
    trained = preprocessing_of(cifar)
    converted, note = conform(folder.with_indices(torch.tensor([4, 1])), trained, source="imagefolder:x")
    assert "imagefolder:x" in note and "converted" in note
    assert converted.samples is pixels  # nothing copied
    x, y = converted.fetch(torch.arange(2))
    expected, _ = cifar.fetch(torch.tensor([4, 1]))
    torch.testing.assert_close(x, expected)
    assert y.tolist() == [4, 1]
    same, none = conform(cifar, trained, source="cifar10:x")
    assert same is cifar and none is None


def test_conform_refuses_what_it_cannot_convert():
    floats = InMemoryDataset(torch.rand(4, 3, 4, 4), torch.zeros(4, dtype=torch.int64))
    trained = Preprocessing("uint8", 1 / 255, *CIFAR10_STATS, (3, 4, 4))
    with pytest.raises(DataError, match="float32.*uint8 pixels"):
        conform(floats, trained, source="digits")
    small = InMemoryDataset(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(DataError, match=r"\(3, 2, 2\).*\(3, 4, 4\)"):
        conform(small, trained, source="imagefolder:y")
    with pytest.raises(DataError, match="cannot check"):
        conform(torch.utils.data.TensorDataset(torch.zeros(2, 3, 4, 4)), trained, source="z")
