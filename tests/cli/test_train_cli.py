"""`dynamicnets train`: shipped configs by name, what it prints, where typos are blamed."""
import subprocess
import sys
import zipfile

import pytest
import yaml

from dynamicnets.cli.main import main
from dynamicnets.configs import find_config, list_configs
from dynamicnets.errors import ConfigError

FAST = ["epochs=2", "max_steps_per_epoch=2", "model_args.width=4"]


def test_shipped_configs_are_found_by_name_and_a_path_still_works(tmp_path):
    names = list_configs()
    assert {"cifar10_resnet20", "digits_small_cnn", "mnist1d_cnn"} <= set(names)
    assert "cifar10_resnet20_zoo" not in names  # a local file next to the checkout is not shipped
    shipped = find_config("digits_small_cnn")
    assert shipped.name == "digits_small_cnn.yaml" and shipped.parent.name == "configs"
    assert find_config("digits_small_cnn.yaml") == shipped
    own = tmp_path / "digits_small_cnn.yaml"  # an existing file wins over the shipped name
    own.write_text("name: mine\n")
    assert find_config(str(own)) == own
    with pytest.raises(ConfigError, match="shipped: .*digits_small_cnn"):
        find_config("no_such_config")
    with pytest.raises(ConfigError, match="not found"):
        find_config(str(tmp_path / "missing" / "digits_small_cnn.yaml"))


def test_train_by_name_prints_a_banner_every_epoch_and_a_summary(tmp_path, capsys):
    assert main(["train", "--config", "digits_small_cnn", f"out_dir={tmp_path}", "progress=false", *FAST]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    run = tmp_path / "digits_small_cnn"
    assert lines[0].startswith("training small_cnn (") and "parameters) on digits" in lines[0]
    assert "2 epochs" in lines[0] and f"run folder {run}" in lines[0]
    assert [line.split()[1] for line in lines[1:3]] == ["1/2", "2/2"]  # per-epoch lines even with progress=false
    assert lines[-1].startswith("finished digits_small_cnn: best val accuracy ")
    assert str(run / "best.pt") in lines[-1] and "at epoch" in lines[-1]
    assert (run / "best.pt").is_file()


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    assert main(["train", "--config", "digits_small_cnn", f"out_dir={tmp_path}", "progress=true", *FAST]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "it/s" not in captured.err
    assert "epoch 2/2" in captured.out


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_a_typo_on_the_command_line_is_blamed_on_the_command_line(tmp_path, capsys):
    assert main(["train", "--config", "digits_small_cnn", f"out_dir={tmp_path}", "epocs=3"]) == 2
    err = _error(capsys)
    assert "command line" in err and "'epocs=3'" in err and "did you mean 'epochs'" in err
    assert "digits_small_cnn.yaml" not in err
    assert main(["train", "--config", "digits_small_cnn", "lr=fast"]) == 2
    err = _error(capsys)
    assert "command-line override" in err and "'lr'" in err


def test_a_typo_in_the_file_is_blamed_on_the_file(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("name: mine\nepocs: 3\n")
    assert main(["train", "--config", str(config), "epochs=1"]) == 2
    err = _error(capsys)
    assert str(config) in err and "'epocs'" in err and "command line" not in err


def test_the_wheel_ships_the_configs_and_the_typing_marker(tmp_path):
    pytest.importorskip("setuptools")
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("dynamicnets-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "dynamicnets/py.typed" in names
    assert {f"dynamicnets/configs/{n}.yaml" for n in list_configs()} <= names


def test_a_run_folder_as_config_resumes_with_the_settings_it_was_started_with(tmp_path, capsys):
    start = ["train", "--config", "digits_small_cnn", f"out_dir={tmp_path / 'old'}", "progress=false",
             "epochs=1", "max_steps_per_epoch=2", "model_args.width=4", "lr=0.0123"]
    assert main(start) == 0
    moved = tmp_path / "moved" / "renamed_run"
    moved.parent.mkdir()
    (tmp_path / "old" / "digits_small_cnn").rename(moved)
    capsys.readouterr()
    assert main(["train", "--config", str(moved), "--resume", "epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "after epoch 1" in out and f"run folder {moved}" in out and "epochs 2..2" in out
    saved = yaml.safe_load((moved / "config.yaml").read_text())
    assert saved["lr"] == 0.0123 and saved["model_args"]["width"] == 4 and saved["max_steps_per_epoch"] == 2
    assert saved["epochs"] == 2 and saved["name"] == "renamed_run" and saved["out_dir"] == str(moved.parent)
    assert not (tmp_path / "old" / "digits_small_cnn").exists()


def test_a_relative_run_folder_keeps_its_saved_out_dir_relative(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = ["train", "--config", "digits_small_cnn", "out_dir=runs", "progress=false", "epochs=1",
             "max_steps_per_epoch=2", "model_args.width=4"]
    assert main(start) == 0
    assert main(["train", "--config", "runs/digits_small_cnn/", "--resume", "epochs=2"]) == 0
    assert "after epoch 1" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "runs" / "digits_small_cnn" / "config.yaml").read_text())
    assert saved["out_dir"] == "runs" and saved["name"] == "digits_small_cnn"


def test_a_run_folder_given_as_dot_resumes_that_run_and_never_inherits_overwrite(tmp_path, capsys, monkeypatch):
    start = ["train", "--config", "digits_small_cnn", f"out_dir={tmp_path}", "progress=false",
             "epochs=1", "max_steps_per_epoch=2", "model_args.width=4"]
    assert main(start) == 0
    assert main([*start, "overwrite=true"]) == 0  # the saved config.yaml now says overwrite: true
    run = tmp_path / "digits_small_cnn"
    monkeypatch.chdir(run)
    capsys.readouterr()
    assert main(["train", "--config", ".", "--resume", "epochs=2"]) == 0
    assert "after epoch 1" in capsys.readouterr().out and not (run / "digits_small_cnn").exists()
    assert main(["train", "--config", ".", "epochs=3"]) == 2  # not replaced without asking
    assert "--resume" in capsys.readouterr().err


def test_a_folder_without_a_saved_config_is_refused_by_name(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path), "--resume"]) == 2
    err = _error(capsys)
    assert str(tmp_path) in err and "run folder with a config.yaml" in err
