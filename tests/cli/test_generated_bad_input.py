"""Generated bad input, one class at a time: whatever hypothesis makes up, the library
answers with its own one-line error (a `DynamicNetsError` naming the culprit) or a valid
result, never another exception (which the CLI would print as a traceback).

Classes: `key=value` overrides, config file bytes, IDX headers, and the fields of a
checkpoint (read by `eval` and by `train --resume`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamicnets.cli.main import main
from dynamicnets.cli.train import build_train_config
from dynamicnets.config import load_yaml
from dynamicnets.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from dynamicnets.errors import CheckpointError, ConfigError, DataError, DynamicNetsError
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.training import TrainConfig

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

KEYS = [f.name for f in dataclasses.fields(TrainConfig)]

# YAML fragments that have broken a parser or a type check before, and plain values.
YAML_BITS = ["", "3", "-1", "0", "1e30", "1e400", ".nan", "-.inf", "true", "null", "~", "[", "]", "{", "}",
             "[1, 2]", "{width: [}", "{width: 4}", "!!python/object/apply:os.system ['true']", "!!binary AA==",
             "&a [*a]", "*x", "'", '"', ": ", "- ", "#", "é", "\x00", "\t", "cuda", "cpu", "digits", "sgd",
             "2.5", "0x10", "1_000", "a: b: c", "|", ">"]

value = st.one_of(st.sampled_from(YAML_BITS),
                  st.lists(st.sampled_from(YAML_BITS), min_size=1, max_size=4).map("".join),
                  st.text(max_size=12))
key = st.one_of(st.sampled_from(KEYS),
                st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(KEYS), st.sampled_from(KEYS + ["x", ""])),
                st.text(alphabet="abc._= ", max_size=6))
override = st.one_of(st.builds(lambda k, v: f"{k}={v}", key, value), st.text(max_size=10))


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text("name: tiny\nmodel: small_cnn\ndata: digits\nepochs: 1\nprogress: false\n")
    return path


@FAST
@given(items=st.lists(override, max_size=4))
def test_generated_overrides_give_a_config_or_a_config_error(config_path, items):
    try:
        config = build_train_config(str(config_path), items)
    except ConfigError as err:
        assert "\n" not in str(err)
    else:
        assert isinstance(config, TrainConfig)


@FAST
@given(content=st.one_of(
    st.binary(max_size=60),
    st.lists(st.sampled_from(YAML_BITS + ["\n", "epochs", "name", "model_args"]), max_size=12).map("".join)
    .map(lambda t: t.encode("utf-8")),
))
def test_generated_config_files_give_a_mapping_or_a_config_error(tmp_path, content):
    path = tmp_path / "generated.yaml"
    path.write_bytes(content)
    try:
        data = load_yaml(path)
    except ConfigError as err:
        assert str(path) in str(err) and "\n" not in str(err)
    else:
        assert isinstance(data, dict)


@FAST
@given(
    magic=st.one_of(st.sampled_from([IMAGES_MAGIC, LABELS_MAGIC]), st.integers(0, 2**32 - 1)),
    dims=st.lists(st.one_of(st.integers(0, 40), st.integers(2**28, 2**32 - 1)), max_size=4),
    body=st.integers(0, 3000),
    expected=st.sampled_from([IMAGES_MAGIC, LABELS_MAGIC]),
)
def test_generated_idx_headers_give_a_tensor_or_a_data_error(tmp_path, magic, dims, body, expected):
    path = tmp_path / "generated-idx"
    content = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + bytes(body)
    path.write_bytes(content)
    try:
        values = read_idx(path, expected)
    except DataError as err:
        assert str(path) in str(err)
    else:  # the header holds `expected & 0xFF` sizes, whatever the generator meant
        assert values.dtype == torch.uint8 and values.dim() == expected & 0xFF
        assert values.numel() == len(content) - 4 - 4 * values.dim()


# ------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished one-epoch run and its config."""
    root = tmp_path_factory.mktemp("run")
    config = root / "tiny.yaml"
    config.write_text(f"name: tiny\nmodel: small_cnn\nmodel_args: {{width: 4}}\ndata: digits\nepochs: 1\n"
                      f"max_steps_per_epoch: 1\nprogress: false\ndevice: cpu\nout_dir: {root / 'runs'}\n")
    assert main(["train", "--config", str(config)]) == 0
    return root / "runs" / "tiny", config


def _odd_values():
    return st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.floats(allow_nan=True),
                     st.text(max_size=6), st.lists(st.integers(-2, 40), max_size=4),
                     st.dictionaries(st.text(max_size=5), st.integers(-2, 5), max_size=3),
                     st.just(torch.zeros(2)), st.just(torch.tensor([float("nan")])))


FIELDS = ["format", "model", "model_name", "model_args", "num_classes", "input_shape", "config", "data",
          "optimizer", "scheduler", "epoch", "step", "best_val_accuracy", "best_epoch", "rng", "history"]


@FAST
@given(changes=st.dictionaries(st.sampled_from(FIELDS), _odd_values(), min_size=1, max_size=3),
       drop=st.lists(st.sampled_from(FIELDS), max_size=2))
def test_generated_checkpoint_fields_give_a_model_or_a_checkpoint_error(run, tmp_path, changes, drop):
    run_dir, _ = run
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    ckpt.update(changes)
    for name in drop:
        ckpt.pop(name, None)
    path = tmp_path / "generated.pt"
    torch.save(ckpt, path)
    try:
        model, loaded = load_trained_model(path)
    except CheckpointError as err:
        assert str(path) in str(err)
    else:
        assert isinstance(loaded["num_classes"], int) and model.training is False


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(FIELDS), _odd_values(), min_size=1, max_size=2))
def test_generated_checkpoint_fields_on_resume_give_a_run_or_a_one_line_error(run, tmp_path_factory, capsys,
                                                                            changes):
    import shutil

    source, _ = run
    root = tmp_path_factory.mktemp("resume")
    shutil.copytree(source, root / "tiny")
    ckpt = torch.load(root / "tiny" / "last.pt", weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, root / "tiny" / "last.pt")
    config = root / "tiny.yaml"
    config.write_text("name: tiny\nmodel: small_cnn\nmodel_args: {width: 4}\ndata: digits\nepochs: 2\n"
                      f"max_steps_per_epoch: 1\nprogress: false\ndevice: cpu\nout_dir: {root}\n")
    capsys.readouterr()
    code = main(["train", "--config", str(config), "--resume"])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "tiny" in lines[0], err
    assert not (root / "tiny" / ".lock").exists()


def test_generated_errors_are_library_errors():
    """The classes above are all `DynamicNetsError`s, which the CLI prints as one line."""
    for cls in (ConfigError, DataError, CheckpointError):
        assert issubclass(cls, DynamicNetsError)
    assert np.iinfo(np.int64).max < 2**64 - 1  # the uint64 labels case is real
