"""Hostile input through the command line: every case ends in exit code 2, exactly one line
on stderr naming the culprit, no traceback, and nothing written before is lost or changed.

Most cases call `dynamicnets.cli.main.main` in-process (a subprocess costs seconds of
imports); a representative few, and those that need a second process (the run-folder
lock, a crash, a full disk), run `python -m dynamicnets` as a user would.
"""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynamicnets.cli.main import main

CONFIG = """\
name: tiny
model: small_cnn
model_args: {width: 4}
data: digits
val_size: 0.2
epochs: 1
batch_size: 64
max_steps_per_epoch: 2
progress: false
device: cpu
"""


# ----------------------------------------------------------------------------- helpers
def write_config(folder: Path, out_dir: Path | str, extra: str = "", name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(CONFIG + f"out_dir: {out_dir}\n" + extra)
    return path


def snapshot(*folders: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mode of every file under `folders` (to prove nothing changed)."""
    state = {}
    for folder in folders:
        if not folder.exists():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                state[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
    return state


def one_error_line(text: str) -> str:
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def fails_with_one_line(argv: list[str], capsys, *culprits: str, guard: tuple[Path, ...] = ()) -> str:
    """Run `dynamicnets ARGV` in-process; exit code 2, one stderr line naming every culprit,
    and the files under `guard` unchanged."""
    before = snapshot(*guard)
    capsys.readouterr()
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    for culprit in culprits:
        assert culprit in line, (culprit, line)
    assert snapshot(*guard) == before
    return line


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m dynamicnets ARGS` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "dynamicnets", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def idx(values: np.ndarray, shape: tuple[int, ...] | None = None) -> bytes:
    values = np.asarray(values, dtype=np.uint8)
    shape = values.shape if shape is None else shape
    magic = 0x0800 | len(shape)
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape) + values.tobytes()


def write_mnist(root: Path, labels: np.ndarray | None = None, image_shape=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    n = 20
    labels = np.arange(n) % 10 if labels is None else labels
    (root / "train-images-idx3-ubyte").write_bytes(idx(np.zeros((n, 28, 28)), image_shape))
    (root / "train-labels-idx1-ubyte").write_bytes(idx(labels))
    return root


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch run: `<tmp>/runs/tiny/{last,best}.pt`."""
    root = tmp_path_factory.mktemp("trained")
    config = write_config(root, root / "runs")
    assert main(["train", "--config", str(config)]) == 0
    return root / "runs" / "tiny"


@pytest.fixture()
def config(tmp_path) -> Path:
    return write_config(tmp_path, tmp_path / "runs")


def doctored(trained: Path, tmp_path: Path, name: str, **changes) -> Path:
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    ckpt.update(changes)
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


# ------------------------------------------------------------------- config overrides
@pytest.mark.parametrize("override, culprit", [
    ("epochs.x=1", "'epochs.x=1'"),                       # after epochs=3: a value, then a mapping
    ("model_args={width: [}", "model_args"),              # YAML parser error
    ("name=!!python/object/apply:os.system ['touch PWNED']", "name="),  # a YAML tag: refused, one line
    ("=3", "'=3'"),
    ("model_args..width=2", "model_args..width"),
], ids=["value-then-mapping", "yaml-syntax", "yaml-tag", "empty-key", "empty-key-part"])
def test_bad_override_is_one_line(config, tmp_path, capsys, monkeypatch, override, culprit):
    monkeypatch.chdir(tmp_path)
    fails_with_one_line(["train", "--config", str(config), "epochs=3", override], capsys, culprit)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "runs").exists()


def test_yaml_tag_in_an_override_is_refused_through_the_console(tmp_path):
    config = write_config(tmp_path, tmp_path / "runs")
    proc = cli("train", "--config", str(config), "name=!!python/object/apply:os.system ['touch PWNED']")
    assert proc.returncode == 2
    assert "tag" in one_error_line(proc.stderr) and not (Path.cwd() / "PWNED").exists()


# -------------------------------------------------------------------------- config files
def test_config_file_that_is_not_utf8_names_it(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(CONFIG.encode() + "name: caf\xe9\n".encode("latin-1"))
    fails_with_one_line(["train", "--config", str(path)], capsys, str(path), "UTF-8")


def test_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel_args: {width: [4,\nepochs: 2\n")
    line = fails_with_one_line(["train", "--config", str(path)], capsys, str(path), "line ", "column ")
    assert "line 2" in line  # where the unclosed bracket opened


# ------------------------------------------------------------------------ output places
def test_out_dir_under_proc_is_one_line(config, capsys):
    fails_with_one_line(["train", "--config", str(config), "out_dir=/proc/dynamicnets-test"], capsys,
                        "/proc/dynamicnets-test")


def test_out_dir_that_is_a_file_is_one_line(config, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    fails_with_one_line(["train", "--config", str(config), f"out_dir={blocker}"], capsys, str(blocker),
                        guard=(tmp_path,))


def test_run_folder_that_is_a_file_is_one_line(config, tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").write_text("keep me")
    fails_with_one_line(["train", "--config", str(config)], capsys, str(tmp_path / "runs" / "tiny"),
                        guard=(tmp_path,))


def test_full_disk_keeps_the_last_good_checkpoint_and_says_so(config, tmp_path, capsys, monkeypatch):
    """Epoch 1 is saved, then the disk is full: one line, and last.pt still holds epoch 1."""
    import dynamicnets.training.checkpoint as checkpoint

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # epoch 1 wrote last.pt and best.pt; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    fails_with_one_line(["train", "--config", str(config), "epochs=2"], capsys, "last.pt", "disk full",
                        "epoch 1")
    monkeypatch.undo()
    run = tmp_path / "runs" / "tiny"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]


# ------------------------------------------------------------------------------ eval
@pytest.mark.parametrize("where", ["folder", "under-a-file", "proc"])
def test_eval_json_that_cannot_be_written_fails_before_evaluating(trained, tmp_path, capsys, where):
    target = {"folder": tmp_path, "under-a-file": trained / "best.pt" / "out.json",
              "proc": Path("/proc/dynamicnets-test.json")}[where]
    fails_with_one_line(["eval", "--checkpoint", str(trained / "best.pt"), "--json", str(target)], capsys,
                        "--json", guard=(trained,))
    assert capsys.readouterr().out == ""  # nothing was evaluated


def test_eval_unknown_device_is_one_line(trained, capsys):
    fails_with_one_line(["eval", "--checkpoint", str(trained / "best.pt"), "--device", "foo"], capsys,
                        "--device", "'foo'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_cuda_without_cuda_is_one_line(trained, capsys):
    fails_with_one_line(["eval", "--checkpoint", str(trained / "best.pt"), "--device", "cuda"], capsys,
                        "--device", "CUDA")


def test_budget_on_a_model_without_exits_is_refused(trained, capsys):
    fails_with_one_line(["eval", "--checkpoint", str(trained / "best.pt"), "--budget", "1M"], capsys,
                        "--budget", "small_cnn")


@pytest.mark.parametrize("field, value", [
    ("model_args", [4]), ("input_shape", 1), ("config", "digits"), ("num_classes", "10"),
    ("model_name", "no_such_model"), ("model_args", {"width": 4, "no_such_argument": 1}),
], ids=["model_args-list", "input_shape-int", "config-str", "num_classes-str", "unknown-model", "bad-arg"])
def test_checkpoint_with_wrong_fields_names_the_file(trained, tmp_path, capsys, field, value):
    path = doctored(trained, tmp_path, "doctored.pt", **{field: value})
    line = fails_with_one_line(["eval", "--checkpoint", str(path)], capsys, str(path))
    assert field in line or "no_such" in line


def test_checkpoint_with_nan_weights_is_refused(trained, tmp_path, capsys):
    weights = torch.load(trained / "best.pt", weights_only=True)["model"]
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = weights[key].clone().fill_(float("nan"))
    path = doctored(trained, tmp_path, "nan.pt", model=weights)
    fails_with_one_line(["eval", "--checkpoint", str(path)], capsys, str(path), key, "NaN")


# ------------------------------------------------------------------------------ data
def test_idx_header_larger_than_the_file_is_one_line(config, tmp_path, capsys):
    root = write_mnist(tmp_path / "mnist", image_shape=(2**31 - 1, 2**31 - 1, 2**31 - 1))
    fails_with_one_line(["train", "--config", str(config), f"data=mnist:{root}"], capsys,
                        "train-images-idx3-ubyte")


def test_mnist_label_outside_the_classes_names_file_and_index(config, tmp_path, capsys):
    labels = np.arange(20) % 10
    labels[7] = 200
    root = write_mnist(tmp_path / "mnist", labels=labels)
    fails_with_one_line(["train", "--config", str(config), f"data=mnist:{root}"], capsys,
                        "train-labels-idx1-ubyte", "label 200", "index 7")


def _cifar_folder(root: Path, labels) -> Path:
    import pickle

    root.mkdir()
    for i in range(1, 6):
        n = 4
        batch = {b"data": np.zeros((n, 3072), np.uint8), b"labels": list(range(n))}
        if i == 3:
            batch[b"labels"] = labels
            batch[b"data"] = np.zeros((max(len(labels), 1), 3072), np.uint8)
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.mark.parametrize("labels, words", [
    ([], ["empty label list"]),
    (np.array([0, 2**64 - 1], dtype=np.uint64), ["18446744073709551615", "index 1"]),
], ids=["empty", "uint64"])
def test_cifar_label_messages_show_what_is_in_the_file(config, tmp_path, capsys, labels, words):
    root = _cifar_folder(tmp_path / "cifar", labels)
    fails_with_one_line(["train", "--config", str(config), f"data=cifar10:{root}"], capsys,
                        "data_batch_3", *words)


def test_sixteen_bit_png_is_scaled_not_saturated(tmp_path, capsys):
    """Not an error: a 16-bit grayscale PNG trains on its real pixel values."""
    for c in ("a", "b"):
        (tmp_path / "images" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), 1000 * (i + 1), np.uint16)).save(tmp_path / "images" / c / f"{i}.png")
    from dynamicnets.data import load_data

    bundle = load_data(f"imagefolder:{tmp_path / 'images'}", val_size=2)
    x, _ = bundle.train[0]
    assert 0.0 < float(x.max()) < 0.1  # 1000..5000 of 65535, never saturated to 1.0


# --------------------------------------------------------------------- training runs
def test_nan_validation_loss_is_a_training_error_and_writes_no_best(config, tmp_path, capsys):
    line = fails_with_one_line(["train", "--config", str(config), "lr=1e30", "max_steps_per_epoch=1"], capsys,
                               "'tiny'")
    assert "nan" in line.lower() or "inf" in line.lower()
    run = tmp_path / "runs" / "tiny"
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()


def test_resume_when_last_pt_is_a_folder_names_it(config, tmp_path, capsys):
    (tmp_path / "runs" / "tiny" / "last.pt").mkdir(parents=True)
    fails_with_one_line(["train", "--config", str(config), "--resume"], capsys, "last.pt", "folder")


def test_overrides_after_resume_are_accepted_and_stale_temp_files_removed(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "runs" / "tiny"
    shutil.copytree(trained, run)
    leftover = run / ".last.pt.k3j2h1.tmp"
    leftover.write_bytes(b"half a checkpoint")
    config = write_config(tmp_path, tmp_path / "runs")
    assert main(["train", "--config", str(config), "name=tiny", "--resume", "epochs=2"]) == 0
    assert not leftover.exists()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def test_run_files_honour_the_umask(config, tmp_path):
    old = os.umask(0o027)
    try:
        assert main(["train", "--config", str(config)]) == 0
    finally:
        os.umask(old)
    run = tmp_path / "runs" / "tiny"
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl"):
        assert (run / name).stat().st_mode & 0o777 == 0o640, name


# -------------------------------------------------------------- one writer per folder
def test_second_writer_is_refused_while_the_first_holds_the_folder(trained, tmp_path):
    """A live owner of the run folder's lock (flock + pid line): the second run is refused."""
    import shutil

    run = tmp_path / "runs" / "tiny"
    shutil.copytree(trained, run)
    config = write_config(tmp_path, tmp_path / "runs")
    holder = subprocess.Popen(  # a stand-in for a running trainer: the same lock protocol, no imports
        [sys.executable, "-c", "import fcntl, os, socket, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, f'pid {os.getpid()} host {socket.gethostname()}\\n'.encode())\n"
         "print('locked', flush=True)\ntime.sleep(120)", str(run / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        proc = cli("train", "--config", str(config), "--resume", "epochs=2")
        assert proc.returncode == 2
        line = one_error_line(proc.stderr)
        assert str(run) in line and f"process {holder.pid}" in line
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()


def test_lock_held_in_this_process_refuses_a_second_trainer(trained, tmp_path, capsys):
    import shutil

    from dynamicnets.training.run_lock import RunLock

    run = tmp_path / "runs" / "tiny"
    shutil.copytree(trained, run)
    config = write_config(tmp_path, tmp_path / "runs")
    with RunLock(run):
        fails_with_one_line(["train", "--config", str(config), "--resume", "epochs=2"], capsys,
                            str(run), f"process {os.getpid()}", guard=(run,))
    assert not (run / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "runs" / "tiny"
    shutil.copytree(trained, run)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / ".lock").write_text(f"pid {dead.pid} host {os.uname().nodename}\n")
    config = write_config(tmp_path, tmp_path / "runs")
    assert main(["train", "--config", str(config), "--resume", "epochs=2"]) == 0
    assert f"process {dead.pid}" in capsys.readouterr().out
    assert not (run / ".lock").exists()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def test_crash_between_last_and_best_is_repaired_on_resume(tmp_path):
    """Killed after last.pt of a new best epoch but before best.pt: resume rebuilds best.pt."""
    config = write_config(tmp_path, tmp_path / "runs", extra="seed: 3\n")
    run = tmp_path / "runs" / "tiny"
    proc = python(f"""
        import os, sys
        import dynamicnets.training.trainer as trainer
        from dynamicnets.cli.main import main
        real = trainer.save_checkpoint
        def save(path, state):
            if path.name == "best.pt" and state["epoch"] == 2:
                os._exit(9)  # killed between the two writes
            real(path, state)
        trainer.save_checkpoint = save
        sys.exit(main(["train", "--config", {str(config)!r}, "epochs=2", "lr=0.1", "max_steps_per_epoch=10"]))
    """)
    last = torch.load(run / "last.pt", weights_only=True)
    if proc.returncode != 9:  # epoch 2 was no better than epoch 1: nothing to repair
        pytest.skip(f"epoch 2 was not a new best (exit {proc.returncode})")
    assert last["best_epoch"] == 2 and torch.load(run / "best.pt", weights_only=True)["epoch"] == 1
    assert main(["train", "--config", str(config), "--resume", "epochs=2", "lr=0.1",
                 "max_steps_per_epoch=10"]) == 0
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == 2
    for key, tensor in last["model"].items():
        assert torch.equal(best["model"][key], tensor), key
