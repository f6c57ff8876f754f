"""An exported `.pt2` graph that would unpickle objects is refused before torch reads it,
even when the folder's manifest carries the tampered file's SHA-256."""
from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from dynamicnets.deploy import DeployedModel, export_model
from dynamicnets.errors import ConfigError
from dynamicnets.models import create_model


class _WritesAFile:
    """Unpickling this writes `marker`: the code a pickled payload can run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3, in_chans=1).eval()
    folder = tmp_path_factory.mktemp("export") / "model"
    export_model(model, folder, format="torch.export", input_shape=(1, 8, 8))
    return folder


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy the archive `src` to `dst`, passing every entry's bytes through `edit(name, data)`
    (None drops the entry; extra entries come back as a dict)."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        for name in archive.namelist():
            data = edit(name, archive.read(name))
            if isinstance(data, dict):
                for extra, payload in data.items():
                    out.writestr(extra, payload)
            elif data is not None:
                out.writestr(name, data)


def _tampered_folder(exported: Path, tmp_path: Path, edit) -> Path:
    """A copy of the export whose first graph is rewritten by `edit`, with the manifest's
    SHA-256 updated to the new bytes (what an attacker controlling the folder can do)."""
    folder = tmp_path / "tampered"
    folder.mkdir()
    manifest = json.loads((exported / "manifest.json").read_text())
    name, entry = next(iter(manifest["graphs"].items()))
    for other in exported.iterdir():
        if other.name != entry["file"] and other.name != "manifest.json":
            (folder / other.name).write_bytes(other.read_bytes())
    _rewrite(exported / entry["file"], folder / entry["file"], edit)
    _vouch_for(folder, manifest, entry)
    return folder


def _vouch_for(folder: Path, manifest: dict, entry: dict) -> None:
    """Put the graph file's current SHA-256 into `entry` and write `manifest` back."""
    entry["sha256"] = hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_untouched_export_loads_and_runs(exported):
    out = DeployedModel.load(exported)(torch.randn(2, 1, 8, 8))
    assert out.logits.shape == (2, 3)


def test_a_pickled_weight_is_refused_and_its_code_never_runs(exported, tmp_path):
    marker = tmp_path / "PWNED"

    def edit(name: str, data: bytes):
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            key = next(iter(config["config"]))
            config["config"][key]["use_pickle"] = True
            return json.dumps(config).encode()
        if "/data/weights/weight_0" in name:
            return pickle.dumps(_WritesAFile(str(marker)))
        return data

    folder = _tampered_folder(exported, tmp_path, edit)
    with pytest.raises(ConfigError, match="use_pickle"):
        DeployedModel.load(folder)
    assert not marker.exists()


def test_a_legacy_pickled_weights_file_is_refused(exported, tmp_path):
    def edit(name: str, data: bytes):
        if name.endswith("_weights_config.json"):
            return {name: data, name.replace("_weights_config.json", ".pt"): b"not read"}
        return data

    with pytest.raises(ConfigError, match="is not part of a program saved by torch.export.save"):
        DeployedModel.load(_tampered_folder(exported, tmp_path, edit))


def test_an_aotinductor_library_beside_the_program_is_refused(exported, tmp_path):
    def edit(name: str, data: bytes):
        if name.endswith("models/model.json"):
            root = name.split("/", 1)[0]
            return {name: data, f"{root}/data/aotinductor/model/model.wrapper.so": b"native code"}
        return data

    with pytest.raises(ConfigError, match="aotinductor.*not part of a program"):
        DeployedModel.load(_tampered_folder(exported, tmp_path, edit))


def test_an_entry_stored_twice_is_refused(exported, tmp_path):
    def edit(name: str, data: bytes):
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            for meta in config["config"].values():
                meta["use_pickle"] = True
            return {name: json.dumps(config).encode(), name + "\0": data}  # renamed below
        return data

    folder = _tampered_folder(exported, tmp_path, edit)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = next(iter(manifest["graphs"].values()))
    graph = folder / entry["file"]
    # write the clean config a second time under the same name: zipfile reads the last copy, torch the first
    with zipfile.ZipFile(graph) as archive:
        items = [(n, archive.read(n)) for n in archive.namelist()]
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(graph, "w") as out:
        for name, data in items:
            out.writestr(name[:-1] if name.endswith("\0") else name, data)
    _vouch_for(folder, manifest, entry)
    with pytest.raises(ConfigError, match="more than once"):
        DeployedModel.load(folder)


def test_the_older_single_folder_less_layout_is_refused(exported, tmp_path):
    def edit(name: str, data: bytes):
        return {name.split("/", 1)[1]: data}  # the entries without their root folder

    with pytest.raises(ConfigError, match="one root folder"):
        DeployedModel.load(_tampered_folder(exported, tmp_path, edit))


def test_sample_inputs_that_need_pickle_are_refused(exported, tmp_path):
    marker = tmp_path / "PWNED"

    def edit(name: str, data: bytes):
        if "/data/sample_inputs/" in name:
            return pickle.dumps(_WritesAFile(str(marker)))
        return data

    with pytest.raises(ConfigError, match="weights_only=True"):
        DeployedModel.load(_tampered_folder(exported, tmp_path, edit))
    assert not marker.exists()


def test_a_file_that_is_no_archive_names_itself(exported, tmp_path):
    folder = _tampered_folder(exported, tmp_path, lambda name, data: data)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = next(iter(manifest["graphs"].values()))
    (folder / entry["file"]).write_bytes(b"garbage, not a zip")
    _vouch_for(folder, manifest, entry)
    with pytest.raises(ConfigError, match=r"not a \.pt2 archive"):
        DeployedModel.load(folder)


@pytest.mark.parametrize("replace, message", [
    (('"target": "torch.ops.', '"target": "torch.serialization.os.system", "x": "'), "not a torch operator"),
    (("Symbol('s", "__import__('os').system('true') or Symbol('s"), "sympy would evaluate as Python"),
])
def test_a_graph_that_calls_python_or_evaluates_text_is_refused(exported, tmp_path, replace, message):
    old, new = replace

    def edit(name: str, data: bytes):
        if "/models/" in name:
            text = data.decode()
            assert old in text  # the export really has what is tampered with
            return text.replace(old, new, 1).encode()
        return data

    with pytest.raises(ConfigError, match=message):
        DeployedModel.load(_tampered_folder(exported, tmp_path, edit))
