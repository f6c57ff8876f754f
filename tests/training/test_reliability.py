"""Trainer reliability: best.pt after a crash between the checkpoint writes, one writer per
run folder, non-finite validation loss or weights, unwritable places, file modes."""
import errno
import os
import subprocess

import pytest
import torch

from dynamicnets.errors import CheckpointError, ConfigError, OutputError, TrainingError
from dynamicnets.training import Trainer, load_checkpoint, resolve_device
from dynamicnets.training import trainer as trainer_module
from dynamicnets.training.checkpoint import TRAINING_FIELDS, check_fields, first_non_finite
from dynamicnets.training.run_lock import RunFolderBusy, RunLock
from dynamicnets.writing import atomic_write_with, check_writable, current_umask, ensure_dir

from .test_trainer import assert_same_weights, make_config, make_trainer, read_metrics


class SimulatedKill(BaseException):
    pass


def kill_when_saving(monkeypatch, name: str, epoch: int) -> None:
    """Die right before `name` is written for `epoch` (the file keeps its old content)."""
    real = trainer_module.save_checkpoint

    def save(path, state):
        if path.name == name and state["epoch"] == epoch:
            raise SimulatedKill(f"killed before writing {name} of epoch {epoch}")
        real(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save)


def test_crash_between_last_and_best_is_repaired_on_resume(tmp_path, monkeypatch, capsys):
    reference = make_trainer(make_config(tmp_path, name="ref"))
    reference.fit()
    best_epoch = load_checkpoint(tmp_path / "ref" / "last.pt")["best_epoch"]
    assert best_epoch > 1  # the tiny clusters improve after epoch 1

    crashed = make_trainer(make_config(tmp_path, name="k"))
    kill_when_saving(monkeypatch, "best.pt", best_epoch)
    with pytest.raises(SimulatedKill):
        crashed.fit()
    monkeypatch.undo()
    run = tmp_path / "k"
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == last["best_epoch"] == best_epoch
    assert load_checkpoint(run / "best.pt")["epoch"] < best_epoch  # stale: the crash window

    make_trainer(make_config(tmp_path, name="k", resume=True)).fit()
    assert "rebuilt from last.pt" in capsys.readouterr().out
    best, ref_best = load_checkpoint(run / "best.pt"), load_checkpoint(tmp_path / "ref" / "best.pt")
    assert best["epoch"] == best_epoch
    assert_same_weights(best["model"], ref_best["model"])


@pytest.mark.parametrize("name", ["last.pt", "metrics.jsonl"])
def test_crash_at_other_write_points_keeps_best_consistent(tmp_path, monkeypatch, name):
    make_trainer(make_config(tmp_path, name="ref")).fit()
    crashed = make_trainer(make_config(tmp_path, name="k"))
    if name == "last.pt":
        kill_when_saving(monkeypatch, "last.pt", 2)
    else:
        real_dump = trainer_module.json.dumps
        monkeypatch.setattr(trainer_module.json, "dumps",
                            lambda record, *a, **k: (_ for _ in ()).throw(SimulatedKill())
                            if isinstance(record, dict) and record.get("epoch") == 2 else real_dump(record, *a, **k))
    with pytest.raises(SimulatedKill):
        crashed.fit()
    monkeypatch.undo()
    make_trainer(make_config(tmp_path, name="k", resume=True)).fit()
    for file in ("best.pt", "last.pt"):
        assert_same_weights(load_checkpoint(tmp_path / "k" / file)["model"],
                            load_checkpoint(tmp_path / "ref" / file)["model"])


def test_nan_validation_loss_is_a_training_error_and_never_best(tmp_path):
    trainer = make_trainer(make_config(tmp_path, epochs=3))
    forward = trainer.model.forward
    calls = {"eval": 0}

    def forward_nan_in_second_validation(x):
        out = forward(x)
        if not trainer.model.training:
            calls["eval"] += 1
            if calls["eval"] > 2:  # 24 validation samples = 2 batches per epoch; epoch 2 goes NaN
                out.logits = out.logits * float("nan")
                out.exit_logits = [e * float("nan") for e in out.exit_logits]
        return out

    trainer.model.forward = forward_nan_in_second_validation
    with pytest.raises(TrainingError, match=r"validation loss became nan after epoch 2.*still holds epoch 1"):
        trainer.fit()
    run = tmp_path / "tiny_run"
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and load_checkpoint(run / "best.pt")["epoch"] == 1
    assert len(read_metrics(run)) == 1


def test_non_finite_weights_are_a_training_error_before_anything_is_written(tmp_path):
    trainer = make_trainer(make_config(tmp_path, epochs=1))
    real_step = trainer._train_step

    def step_then_poison(x, y, e, i):
        result = real_step(x, y, e, i)
        if i == trainer.steps_per_epoch - 1:  # after the last step: the loss never saw it
            with torch.no_grad():
                trainer.model.body2.bias[0] = float("inf")
        return result

    trainer._train_step = step_then_poison
    with pytest.raises(TrainingError, match=r"weights became NaN/inf \(first: 'body2.bias'\).*no epoch"):
        trainer.fit()
    assert not (tmp_path / "tiny_run" / "best.pt").exists()
    assert not (tmp_path / "tiny_run" / ".lock").exists()


def test_resume_refuses_a_checkpoint_with_nan_weights(tmp_path):
    make_trainer(make_config(tmp_path, epochs=1)).fit()
    path = tmp_path / "tiny_run" / "last.pt"
    ckpt = load_checkpoint(path)
    ckpt["model"]["exit1.weight"][0, 0] = float("nan")
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"last.pt: tensor 'exit1.weight' holds NaN"):
        make_trainer(make_config(tmp_path, epochs=2, resume=True)).fit()


def test_resume_when_last_pt_is_a_folder_says_so(tmp_path):
    (tmp_path / "tiny_run" / "last.pt").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"last.pt: is a folder"):
        make_trainer(make_config(tmp_path, resume=True)).fit()


def test_resume_removes_stale_temporary_files_only(tmp_path, capsys):
    make_trainer(make_config(tmp_path, epochs=1)).fit()
    run = tmp_path / "tiny_run"
    stale = [run / ".last.pt.abc123.tmp", run / ".best.pt.x.tmp", run / ".metrics.jsonl.y.tmp"]
    for path in stale:
        path.write_bytes(b"torn")
    foreign = run / ".notes.txt.tmp"
    foreign.write_text("not ours")
    make_trainer(make_config(tmp_path, epochs=2, resume=True)).fit()
    assert not any(p.exists() for p in stale) and foreign.exists()
    assert "left over by a crashed write" in capsys.readouterr().out


# ------------------------------------------------------------------------- the lock
def test_lock_refuses_a_second_holder_and_names_the_pid(tmp_path):
    with RunLock(tmp_path / "run") as first:
        assert (tmp_path / "run" / ".lock").read_text().startswith(f"pid {os.getpid()} ")
        with pytest.raises(RunFolderBusy, match=rf"in use by process {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
        assert first.stale_owner is None
    assert not (tmp_path / "run" / ".lock").exists()
    RunLock(tmp_path / "run").acquire().release()  # free again


def test_lock_of_a_dead_process_is_stale_and_taken_over(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"pid {dead.pid} host {os.uname().nodename}\n")
    lock = RunLock(tmp_path).acquire()
    try:
        assert lock.stale_owner == dead.pid
    finally:
        lock.release()


def test_trainer_refuses_a_folder_another_writer_holds(tmp_path):
    with RunLock(tmp_path / "tiny_run"):
        with pytest.raises(RunFolderBusy, match="tiny_run"):
            make_trainer(make_config(tmp_path)).fit()
        assert not (tmp_path / "tiny_run" / "last.pt").exists()


# ------------------------------------------------------------------ output places
def test_unwritable_places_are_output_errors_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="file.*is a file"):
        ensure_dir(blocker / "sub")
    with pytest.raises(OutputError, match="/proc/dynamicnets-x"):
        ensure_dir("/proc/dynamicnets-x")
    with pytest.raises(OutputError, match="--json .*is a folder"):
        check_writable(tmp_path, "--json")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(blocker / "a.json", "--json")
    check_writable(tmp_path / "new" / "a.json")
    assert not (tmp_path / "new").exists()  # a check creates nothing


@pytest.mark.parametrize("what, expected", [("export folder", "expected an export folder"),
                                            ("run folder", "expected a run folder")])
def test_a_file_in_place_of_a_folder_takes_the_right_article(tmp_path, what, expected):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=rf"file: is a file, {expected}$"):
        ensure_dir(blocker, what)


def test_full_disk_is_an_output_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_with(path, lambda f: f.write(b"old"))

    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="disk full"):
        atomic_write_with(path, full)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_files_get_the_mode_of_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        assert current_umask() == 0o077
        atomic_write_with(tmp_path / "private", lambda f: f.write(b"x"))
        os.umask(0o002)
        atomic_write_with(tmp_path / "shared", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o664


# -------------------------------------------------------------- checkpoint fields
def test_check_fields_names_the_field_and_what_it_should_be(tmp_path):
    make_trainer(make_config(tmp_path, epochs=1)).fit()
    ckpt = load_checkpoint(tmp_path / "tiny_run" / "last.pt")
    check_fields(ckpt, TRAINING_FIELDS, "last.pt")
    for field, value, words in [("model_args", [1], "mapping"), ("input_shape", 4, "list of positive"),
                                ("config", "x", "mapping"), ("epoch", True, "integer"),
                                ("best_epoch", "2", "integer or null")]:
        with pytest.raises(CheckpointError, match=rf"last.pt: field '{field}' should be .*{words}"):
            check_fields({**ckpt, field: value}, TRAINING_FIELDS, "last.pt")
    with pytest.raises(CheckpointError, match="no rng"):
        check_fields({k: v for k, v in ckpt.items() if k != "rng"}, TRAINING_FIELDS, "last.pt")
    assert first_non_finite({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}) == "b"


def test_resolve_device_refuses_unknown_names_and_missing_cuda():
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match=r"--device: expected auto, cpu, cuda or cuda:N, got 'foo'"):
        resolve_device("foo", what="--device")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA"):
            resolve_device("cuda")


def test_a_run_folder_the_lock_created_is_removed_when_nothing_was_written(tmp_path):
    with RunLock(tmp_path / "new_run"):
        assert (tmp_path / "new_run" / ".lock").is_file()
    assert not (tmp_path / "new_run").exists()
    (tmp_path / "kept").mkdir()
    with RunLock(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir()  # it existed before: left alone
