import os

import pytest
import torch

from dynamicnets.errors import CheckpointError
from dynamicnets.training import check_compatible, load_checkpoint, save_checkpoint
from dynamicnets import writing as writing_module
from dynamicnets.training import checkpoint as checkpoint_module

from .tiny import tiny_model


def _state(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "epoch": 2, "history": [{"loss": 0.5}], "name": "x"}


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_save_then_load_round_trips_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, _state(1.0))
    save_checkpoint(path, _state(2.0))  # replaces
    got = load_checkpoint(path)
    assert torch.equal(got["model"]["w"], torch.full((3,), 2.0))
    assert got["epoch"] == 2 and got["history"] == [{"loss": 0.5}]
    assert _files(path.parent) == ["last.pt"]


def test_crash_while_writing_keeps_previous_checkpoint_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1.0))
    real_save = torch.save

    def save_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the temp file now holds the new bytes...
        f.flush()
        assert os.path.getsize(f.name) > 0 and f.name != str(path)
        raise OSError("disk full (simulated)")  # ...and the process dies before the rename

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert _files(tmp_path) == ["last.pt"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((3,), 1.0))


def test_crash_before_rename_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1.0))

    def broken_replace(src, dst):
        raise KeyboardInterrupt  # killed between write and rename

    monkeypatch.setattr(writing_module.os, "replace", broken_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert _files(tmp_path) == ["last.pt"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((3,), 1.0))


class Payload:
    """An arbitrary Python object: unpickling it would run code of our choosing."""

    def __init__(self, note: str) -> None:
        self.note = note


def test_pickled_python_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Payload("hi")}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt.*not found"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_file_names_it(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a checkpoint at all" * 10, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="last.pt"):
        load_checkpoint(path)


def test_unreadable_file_error_names_the_exception_type(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"hello world garbage")  # the unpickler fails with a bare KeyError(101)
    with pytest.raises(CheckpointError, match=r"last.pt: cannot read checkpoint .*\): \w+Error: 101$"):
        load_checkpoint(path)


def test_non_dict_checkpoint_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="expected a checkpoint dict"):
        load_checkpoint(path)


def _ckpt(model, name="tiny"):
    return {"model": model.state_dict(), "model_name": name}


def test_check_compatible_accepts_the_same_architecture():
    check_compatible(_ckpt(tiny_model(seed=1)), "tiny", tiny_model(seed=2))


def test_check_compatible_refuses_another_model_name():
    with pytest.raises(CheckpointError, match="'tiny'.*expected 'small_cnn'"):
        check_compatible(_ckpt(tiny_model()), "small_cnn", tiny_model(), source="runs/x/last.pt")


def test_check_compatible_names_first_shape_mismatch():
    with pytest.raises(CheckpointError, match=r"runs/x/last.pt: key 'body1.weight' has shape \(12, 16\)"):
        check_compatible(_ckpt(tiny_model(hidden=12)), "tiny", tiny_model(hidden=8), source="runs/x/last.pt")


def test_check_compatible_names_missing_and_unexpected_keys():
    ckpt = _ckpt(tiny_model())
    del ckpt["model"]["exit2.bias"]
    with pytest.raises(CheckpointError, match="'exit2.bias'.*missing"):
        check_compatible(ckpt, "tiny", tiny_model())
    ckpt = _ckpt(tiny_model())
    ckpt["model"]["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="'extra.weight'"):
        check_compatible(ckpt, "tiny", tiny_model())
    with pytest.raises(CheckpointError, match="no 'model'"):
        check_compatible({"model_name": "tiny"}, "tiny", tiny_model())
