"""An edited or damaged manifest is one `ConfigError` naming `manifest.json` and the key, at
load time; the untouched manifests of every kind pass."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from dynamicnets.deploy import DeployedModel, export_model, read_manifest
from dynamicnets.errors import ConfigError
from dynamicnets.models import create_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("exports")
    models = {
        "early_exit": (create_model("multi_exit_cnn", num_classes=3, in_chans=1, width=4), (1, 8, 8)),
        "static": (create_model("small_cnn", num_classes=3, in_chans=1, width=4), (1, 8, 8)),
        "gated": (create_model("convnet_aig_resnet", depth=14, width=4), (3, 8, 8)),
        "width": (create_model("dsnet_resnet_cifar", base_width=4, widths=[0.5, 1.0]), (3, 8, 8)),
        "resolution": (create_model("dynamic_resolution_resnet"), (3, 32, 32)),
    }
    for kind, (model, shape) in models.items():
        export_model(model.eval(), root / kind, input_shape=shape)
    return {kind: root / kind for kind in models}


def _edited(folder: Path, tmp_path: Path, edit) -> Path:
    copy_ = tmp_path / folder.name
    shutil.copytree(folder, copy_)
    manifest = json.loads((copy_ / "manifest.json").read_text())
    edit(manifest)
    (copy_ / "manifest.json").write_text(json.dumps(manifest))
    return copy_


def _first_graph(m: dict) -> dict:
    return next(iter(m["graphs"].values()))


EDITS = [
    ("static", lambda m: m["graphs"].update({next(iter(m["graphs"])): "exit0"}), r"key 'graphs\.\w+': expected an object"),
    ("static", lambda m: _first_graph(m).pop("flops"), r"key 'graphs\.\w+\.flops' is missing"),
    ("static", lambda m: _first_graph(m).update(flops="abc"), r"key 'graphs\.\w+\.flops': expected a finite number"),
    ("static", lambda m: _first_graph(m).update(sha256="12"), r"key 'graphs\.\w+\.sha256': expected 64"),
    ("static", lambda m: _first_graph(m).update(file="../../etc/passwd"), r"key 'graphs\.\w+\.file': expected a file name"),
    ("static", lambda m: m.update(input_shape=64), r"key 'input_shape': expected a list of positive integers"),
    ("static", lambda m: m.update(structure={}), r"key 'structure\.graph' is missing"),
    ("early_exit", lambda m: m.update(policy=None), r"key 'policy': expected"),
    ("early_exit", lambda m: m["policy"].pop("criterion"), r"key 'policy'.*malformed.*criterion"),
    ("early_exit", lambda m: m["policy"].update(thresholds=[0.5] * 9), r"key 'policy'.*thresholds"),
    ("early_exit", lambda m: m["structure"].pop("exit_costs"), r"key 'structure\.exit_costs' is missing"),
    ("early_exit", lambda m: m["structure"]["stages"][1].update(state_in=None), r"key 'structure\.stages\[1\]\.state_in'"),
    ("early_exit", lambda m: m.update(kind="static"), r"key 'structure\.graph' is missing"),
    ("gated", lambda m: m["structure"].update(num_gates=99), r"key 'structure\.num_gates'"),
    ("gated", lambda m: m["structure"]["steps"].append({"gate": "g"}), r"key 'structure\.steps\[\d+\]'"),
    ("gated", lambda m: m.update(policy={"thresholds": "x"}), r"key 'policy'"),
    ("width", lambda m: m["structure"].update(widths=[1.0]), r"key 'structure\.widths': expected a list of numbers of length"),
    ("width", lambda m: m.update(policy=None), r"key 'policy': expected an object"),
    ("resolution", lambda m: m["structure"]["resolutions"].pop(), r"key 'structure\.resolutions': expected a list"),
    ("resolution", lambda m: m.update(policy={"kind": "nonsense"}), r"key 'policy'"),
]


@pytest.mark.parametrize("kind, edit, message", EDITS)
def test_a_damaged_manifest_is_one_clear_error_naming_the_file_and_key(folders, tmp_path, kind, edit, message):
    folder = _edited(folders[kind], tmp_path, edit)
    with pytest.raises(ConfigError, match=message) as error:
        DeployedModel.load(folder)
    assert str(folder / "manifest.json") in str(error.value)


@pytest.mark.parametrize("kind", ["early_exit", "static", "gated", "width", "resolution"])
def test_untouched_manifests_of_every_kind_pass_and_run(folders, kind):
    manifest = read_manifest(folders[kind])
    deployed = DeployedModel.load(folders[kind])
    out = deployed(torch.randn(3, *manifest["input_shape"]))
    assert out.logits.shape[0] == 3 and out.flops.shape == (3,)
    assert read_manifest(folders[kind]) == copy.deepcopy(manifest)
