"""Exporting into a folder loses nothing: a failed re-export leaves the earlier export whole,
a new export removes only the graph files its predecessor listed, and an export that
disagrees with eager inference does not stay loadable."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynamicnets.deploy import DeployedModel, export_model
from dynamicnets.deploy import export as export_module
from dynamicnets.errors import ConfigError, ExportCheckError, OutputError
from dynamicnets.models import create_model
from dynamicnets.pipelines import export as export_pipeline
from dynamicnets.pipelines.export import ExportRequest, export_checkpoint, export_folder_size
from dynamicnets.training import TrainConfig, Trainer

SHAPE = (1, 8, 8)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=3, in_chans=1, width=4).eval()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_interrupted_re_export_leaves_the_earlier_export_whole(tmp_path, monkeypatch):
    folder = tmp_path / "deployed"
    export_model(_model("multi_exit_cnn"), folder, input_shape=SHAPE)
    before, x = _files(folder), torch.randn(4, *SHAPE)
    expected = DeployedModel.load(folder)(x).logits
    real, calls = export_module.graph_bytes, []

    def interrupted(graph, name, fmt):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(graph, name, fmt)

    monkeypatch.setattr(export_module, "graph_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(_model("multi_exit_cnn"), folder, input_shape=SHAPE)
    assert _files(folder) == before
    assert torch.equal(DeployedModel.load(folder)(x).logits, expected)


def test_a_re_export_failing_while_it_writes_leaves_the_earlier_export_whole(tmp_path, monkeypatch):
    folder = tmp_path / "deployed"
    export_model(_model("multi_exit_cnn"), folder, input_shape=SHAPE)
    before = _files(folder)
    real, calls = export_module.atomic_write_with, []

    def disk_full_at_the_second_file(path, write):
        calls.append(path)
        if len(calls) == 2:
            raise OutputError(f"{path}: no space left on device")
        return real(path, write)

    monkeypatch.setattr(export_module, "atomic_write_with", disk_full_at_the_second_file)
    with pytest.raises(OutputError, match="no space left"):
        export_model(_model("multi_exit_cnn"), folder, input_shape=SHAPE)
    assert _files(folder) == before  # no staged file left behind either


def test_a_new_export_removes_the_graphs_only_its_predecessor_listed(tmp_path):
    folder = tmp_path / "deployed"
    export_model(_model("multi_exit_cnn"), folder, input_shape=SHAPE)
    (folder / "NOTES.txt").write_text("the user's own file")
    export_model(_model("small_cnn"), folder, input_shape=SHAPE)
    listed = {e["file"] for e in json.loads((folder / "manifest.json").read_text())["graphs"].values()}
    assert {p.name for p in folder.iterdir()} == listed | {"manifest.json", "NOTES.txt"}
    assert export_folder_size(folder) == sum((folder / f).stat().st_size for f in listed | {"manifest.json"})
    assert DeployedModel.load(folder)(torch.randn(2, *SHAPE)).logits.shape == (2, 3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    Trainer(TrainConfig(name="cnn", model="small_cnn", model_args={"width": 4}, data="digits", val_size=0.2,
                        epochs=1, batch_size=64, max_steps_per_epoch=3, threads=1, device="cpu",
                        out_dir=str(root), progress=False)).fit()
    return root / "cnn" / "last.pt"


def test_an_export_that_disagrees_with_eager_is_moved_aside(checkpoint, tmp_path, monkeypatch):
    real = export_pipeline._eager

    def shifted(model, x, policy):
        out = real(model, x, policy)
        out.logits = out.logits + 0.5  # as if the exported graphs computed something else
        return out

    monkeypatch.setattr(export_pipeline, "_eager", shifted)
    folder = tmp_path / "deployed"
    with pytest.raises(ExportCheckError, match="logits 0.5 away from eager"):
        export_checkpoint(ExportRequest(checkpoint=str(checkpoint), out_dir=str(folder)))
    assert not (folder / "manifest.json").exists() and (folder / "manifest.rejected.json").is_file()
    with pytest.raises(ConfigError):
        DeployedModel.load(folder)
    monkeypatch.setattr(export_pipeline, "_eager", real)  # exported again, it passes: nothing of the
    export_checkpoint(ExportRequest(checkpoint=str(checkpoint), out_dir=str(folder)))  # rejected one stays
    listed = {e["file"] for e in json.loads((folder / "manifest.json").read_text())["graphs"].values()}
    assert {p.name for p in folder.iterdir()} == listed | {"manifest.json"}


def test_an_export_that_agrees_with_eager_passes_its_check(checkpoint, tmp_path):
    summary = export_checkpoint(ExportRequest(checkpoint=str(checkpoint), out_dir=str(tmp_path / "deployed")))
    assert summary["check_decisions_equal"] and summary["check_max_logit_difference"] < 1e-4


def test_a_negative_check_count_is_refused_before_anything_is_written(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="--check-samples"):
        export_checkpoint(ExportRequest(checkpoint=str(checkpoint), out_dir=str(tmp_path / "x"), check_samples=-1))
    assert not (tmp_path / "x").exists()
