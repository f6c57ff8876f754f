"""Shipped pretrained weights: the registry, sha256-checked loading, and its errors."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from dynamicnets import CheckpointError, ConfigError, create_model
from dynamicnets.cli.main import main
from dynamicnets.models.pretrained import (
    default_weights_dir,
    list_pretrained,
    load_pretrained_state,
    pretrained_weights,
    read_registry,
    sha256_file,
)

CIFAR = Path(__file__).parents[2] / "data" / "cifar-10-batches-py"


@pytest.fixture()
def copied(tmp_path):
    """A copy of the shipped weights folder (registry.json and resnet20's file)."""
    source = default_weights_dir()
    shutil.copy(source / "registry.json", tmp_path / "registry.json")
    shutil.copy(source / "resnet20_cifar10.pt", tmp_path / "resnet20_cifar10.pt")
    return tmp_path


def test_shipped_resnet20_matches_its_registry_row_and_loads_the_file():
    row = pretrained_weights("resnet20", "cifar10")
    path = default_weights_dir() / row.file
    assert sha256_file(path) == row.sha256
    assert 0.9 < row.val_accuracy < 1 and row.params == 272474 and row.flops == 81626368
    assert row.cpu_hours > 0 and row.config == "cifar10_resnet20_zoo"
    assert path.stat().st_size < 1.5e6  # state_dict only, no optimizer state
    saved = torch.load(path, weights_only=True)
    assert all(t.dtype in (torch.float32, torch.int64) for t in saved.values())
    model = create_model("resnet20", pretrained="cifar10")
    state = model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert sum(p.numel() for p in model.parameters()) == row.params
    # the preprocessing the weights expect is CIFAR-10's, as in training
    assert row.preprocessing.mean == pytest.approx((0.4914, 0.4822, 0.4465))
    assert row.preprocessing.std == pytest.approx((0.2470, 0.2435, 0.2616))
    assert row.data["val_size"] == 5000 and row.data["seed"] == 0


def test_pretrained_true_picks_the_only_tag_or_the_default_one():
    fresh = create_model("resnet_exits").state_dict()
    loaded = create_model("resnet_exits", pretrained=True).state_dict()  # its only tag
    named = create_model("resnet_exits", pretrained="cifar10").state_dict()
    assert all(torch.equal(loaded[k], named[k]) for k in named)
    assert not all(torch.equal(loaded[k], fresh[k]) for k in fresh)
    # models shipping two CIFAR-10 weights name their default: the Cutout runs for the ResNets,
    # the Mixup/CutMix chain for the ViTs, the run from scratch for DY-ReLU
    for name, tags, default in (("resnet20", ["cifar10", "cifar10_cutout"], "cifar10_cutout"),
                                ("resnet56", ["cifar10", "cifar10_cutout"], "cifar10_cutout"),
                                ("vit_cifar", ["cifar10", "cifar10_mix"], "cifar10_mix"),
                                ("dynamic_vit_cifar", ["cifar10", "cifar10_mix"], "cifar10_mix"),
                                ("resnet20_dyrelu", ["cifar10", "cifar10_scratch"], "cifar10_scratch")):
        assert [w.tag for w in list_pretrained(name)] == tags
        assert pretrained_weights(name, True).tag == default


def test_a_tampered_copy_is_refused_with_the_file_and_the_expected_hash(copied):
    expected = pretrained_weights("resnet20", "cifar10").sha256
    create_model("resnet20", pretrained="cifar10", pretrained_dir=copied)  # the intact copy loads
    weights = copied / "resnet20_cifar10.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        create_model("resnet20", pretrained="cifar10", pretrained_dir=copied)
    message = str(info.value)
    assert str(weights) in message and expected in message and "does not match" in message


def test_a_missing_file_names_the_file_and_the_expected_hash(copied):
    (copied / "resnet20_cifar10.pt").unlink()
    expected = pretrained_weights("resnet20", "cifar10").sha256
    with pytest.raises(CheckpointError) as info:
        create_model("resnet20", pretrained="cifar10", pretrained_dir=copied)
    assert "resnet20_cifar10.pt" in str(info.value) and "not found" in str(info.value)
    assert expected in str(info.value)


def test_a_pretrained_dir_without_a_registry_names_the_folder(tmp_path):
    with pytest.raises(ConfigError, match=rf"pretrained_dir '{re.escape(str(tmp_path))}' has no registry.json"):
        create_model("resnet20", pretrained=True, pretrained_dir=tmp_path)
    missing = re.escape(str(tmp_path / "nonexist"))
    with pytest.raises(ConfigError, match=rf"pretrained_dir '{missing}' does not exist; expected a folder holding "
                                          r"registry.json"):
        create_model("resnet20", pretrained=True, pretrained_dir=str(tmp_path / "nonexist"))


def test_an_unknown_tag_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"'resnet20': no pretrained weights tagged 'imagenet'; "
                                          r"available tags: cifar10"):
        create_model("resnet20", pretrained="imagenet")


def test_a_model_without_weights_lists_the_models_that_have_some():
    with pytest.raises(ConfigError, match=r"'resnet32': no pretrained weights are shipped .*resnet20 \(cifar10\)"):
        create_model("resnet32", pretrained=True)


@pytest.mark.parametrize("value", [1, 0, 2.0, ["cifar10"]])
def test_pretrained_must_be_a_bool_or_a_tag(value):
    with pytest.raises(ConfigError, match="pretrained: expected False, True or a tag"):
        create_model("resnet20", pretrained=value)


def test_arguments_the_weights_do_not_fit_are_named():
    with pytest.raises(ConfigError, match=r"'head.fc.bias' has shape \(10,\) in the weights but \(100,\) in the "
                                          r"model; the weights fit resnet20\(num_classes=10, in_chans=3\)"):
        create_model("resnet20", pretrained="cifar10", num_classes=100)


def _row(table: dict, model: str) -> dict:
    """The registry row of `model` (rows are sorted by model name, so not always the first)."""
    return next(row for row in table["weights"] if row["model"] == model)


def test_true_is_ambiguous_with_two_tags_unless_one_is_default(copied):
    table = json.loads((copied / "registry.json").read_text())
    table["weights"] = [w for w in table["weights"] if w["model"] != "resnet20" or w["tag"] == "cifar10"]
    second = dict(_row(table, "resnet20"), tag="cifar10b", default=False)
    table["weights"].append(second)
    (copied / "registry.json").write_text(json.dumps(table))
    with pytest.raises(ConfigError, match="ambiguous.*cifar10, cifar10b"):
        create_model("resnet20", pretrained=True, pretrained_dir=copied)
    second["default"] = True
    (copied / "registry.json").write_text(json.dumps(table))
    assert pretrained_weights("resnet20", True, copied).tag == "cifar10b"
    assert [w.tag for w in list_pretrained("resnet20", copied)] == ["cifar10", "cifar10b"]


def test_a_malformed_registry_row_names_the_field(copied):
    table = json.loads((copied / "registry.json").read_text())
    del _row(table, "resnet20")["sha256"]
    (copied / "registry.json").write_text(json.dumps(table))
    with pytest.raises(CheckpointError, match="registry.json: row resnet20/cifar10: missing field 'sha256'"):
        read_registry(copied)


def test_weights_load_with_weights_only(copied):
    state = load_pretrained_state(pretrained_weights("resnet20", "cifar10", copied), copied)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())


def test_models_pretrained_lists_resnet20(capsys):
    assert main(["models", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("resnet20 "))
    assert "cifar10" in row and "90.88%" in row and "272K" in row and "81.6M" in row
    assert main(["models", "msdnet*", "--pretrained"]) == 0
    assert "no shipped pretrained weights" in capsys.readouterr().err


def test_the_readme_lists_the_shipped_weights_as_the_cli_does(capsys):
    assert main(["models", "--pretrained"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.strip()][:-1]  # the legend last
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "\n".join(table) in readme, "README's zoo listing differs from `dynamicnets models --pretrained`"


def test_pretrained_resnet20_classifies_real_cifar_validation_images():
    """Real CIFAR-10 (skipped without the data): the first 200 images of the seeded validation
    split that live in the first training batch, prepared with the shipped preprocessing."""
    if not CIFAR.is_dir():
        pytest.skip(f"real data not found at {CIFAR}")
    from dynamicnets.data.cifar import read_cifar_batch
    from dynamicnets.data.split import split_indices

    row = pretrained_weights("resnet20", "cifar10")
    _, val = split_indices(50000, row.data["val_size"], row.data["seed"])
    images, labels = read_cifar_batch(CIFAR / "data_batch_1", b"labels", 10)
    chosen = val[val < len(labels)][:200]
    prep = row.preprocessing
    x = images[chosen].float() * prep.scale
    x = (x - torch.tensor(prep.mean).view(3, 1, 1)) / torch.tensor(prep.std).view(3, 1, 1)
    model = create_model("resnet20", pretrained="cifar10").eval()
    with torch.inference_mode():
        predicted = model(x).logits.argmax(1)
    accuracy = (predicted == labels[chosen]).double().mean().item()
    assert accuracy > 0.85


@pytest.mark.parametrize(("argv", "message"), [
    (["eval"], "eval needs --checkpoint CK, or --model NAME --pretrained"),
    (["eval", "--model", "resnet20", "--pretrained", "cifar10"], "--data: shipped weights carry no data path"),
    (["eval", "--model", "resnet20", "--data", "digits"], "--model resnet20: add --pretrained"),
    (["eval", "--checkpoint", "x.pt", "--model", "resnet20", "--pretrained"], "give one, a checkpoint or shipped"),
    (["eval", "--model", "resnet20", "--pretrained", "imagenet", "--data", "digits"], "available tags: cifar10"),
])
def test_eval_of_shipped_weights_refuses_incomplete_requests_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_weights_paired_with_data_of_another_shape_blame_the_shape_not_the_recorded_split(capsys):
    from dynamicnets.cli.main import main

    # digits has 1,797 images, fewer than the 5,000 the CIFAR-10 weights were validated on:
    # the real problem is the input shape, which is what the one error names
    assert main(["eval", "--model", "resnet20", "--pretrained", "cifar10", "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert "inputs are (1, 8, 8), but the model was trained on (3, 32, 32)" in err and "val_size" not in err
