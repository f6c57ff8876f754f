"""`dynamicnets attack` on digits checkpoints: records, caps, budgets and errors."""
import json

import pytest

from dynamicnets.cli.main import main

CONFIG = """\
name: {name}
model: {model}
model_args: {{width: 8}}
data: digits
val_size: 0.2
epochs: 1
max_steps_per_epoch: 10
progress: false
out_dir: {out}
"""
KEYS = {"defense", "attack", "efficacy", "accuracy", "mean_flops", "max_flops", "cap"}


def _train(root, name, model):
    config = root / f"{name}.yaml"
    config.write_text(CONFIG.format(name=name, model=model, out=root / "runs"))
    assert main(["train", "--config", str(config)]) == 0
    return root / "runs" / name / "last.pt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("attack_cli"), "exits", "multi_exit_cnn")


def _attack(checkpoint, tmp_path, *args):
    out = tmp_path / "attack.json"
    code = main(["attack", "--checkpoint", str(checkpoint), "--out", str(out), "--samples", "48", *args])
    return code, (json.loads(out.read_text()) if code == 0 else None)


def test_slowdown_records_clean_and_attacked_with_and_without_a_cap(checkpoint, tmp_path, capsys):
    code, probe = _attack(checkpoint, tmp_path, "--kind", "slowdown", "--eps", "8/255", "--steps", "2",
                          "--thresholds", "0.5,0.5")
    assert code == 0
    cap = probe["meta"]["exit_costs"][1]
    code, result = _attack(checkpoint, tmp_path, "--kind", "slowdown", "--eps", "8/255", "--steps", "3",
                           "--thresholds", "0.5,0.5", "--max-flops", str(cap))
    assert code == 0
    meta, records = result["meta"], result["records"]
    assert meta["eps"] == pytest.approx(8 / 255) and meta["samples"] == 48
    assert 0 < meta["perturbation_linf"] <= 8 / 255 + 1e-6 and meta["pixel_range"] == [0.0, 1.0]
    assert [(r["attack"], r["cap"]) for r in records] == [("none", None), ("none", cap),
                                                          ("slowdown", None), ("slowdown", cap)]
    for record in records:
        assert KEYS <= record.keys() and record["defense"] == "none" and record["samples"] == 48
        assert 0 <= record["efficacy"] <= 1 and record["max_flops"] >= record["mean_flops"]
        if record["cap"] is not None:
            assert record["max_flops"] <= cap
    assert "slowdown" in capsys.readouterr().out


def test_pgd_with_a_budget_calibrated_on_clean_data(checkpoint, tmp_path):
    code, result = _attack(checkpoint.parent, tmp_path, "--kind", "pgd", "--eps", "0.2", "--steps", "5",
                           "--budget", "70%")  # a run folder stands for its checkpoint
    assert code == 0 and result["meta"]["checkpoint"] == str(checkpoint.parent / "best.pt")
    assert "fitted on one seeded half" in result["meta"]["protocol"]
    clean, attacked = result["records"]
    assert attacked["attack"] == "pgd" and attacked["accuracy"] < clean["accuracy"]


@pytest.mark.parametrize("args, named", [
    (["--kind", "pgd", "--eps", "-1", "--thresholds", "0.5,0.5"], "--eps"),
    (["--kind", "pgd", "--eps", "8/255", "--steps", "0", "--thresholds", "0.5,0.5"], "--steps"),
    (["--kind", "slowdown", "--eps", "eight", "--thresholds", "0.5,0.5"], "--eps"),
    (["--kind", "slowdown", "--eps", "8/255"], "exit rule"),
    (["--kind", "slowdown", "--eps", "8/255", "--max-flops", "1M"], "--max-flops"),
])
def test_bad_input_is_one_error_line(checkpoint, tmp_path, capsys, args, named):
    code, _ = _attack(checkpoint, tmp_path, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and named in err[0]


@pytest.mark.parametrize("args, message", [
    (["--step-size", "abc"], "--step-size: expected a number or a fraction"),
    (["--step-size", "0"], "--step-size: expected a number > 0"),
    (["--budget", "50%", "--thresholds", "0.5"], "(got --budget, --thresholds)"),
])
def test_bad_options_are_named_as_typed(tmp_path, capsys, args, message):
    code, _ = _attack(tmp_path / "never_read.pt", tmp_path, "--kind", "pgd", "--eps", "8/255",
                      *args)  # refused before the checkpoint is read
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_slowdown_needs_exits_or_gates(tmp_path, capsys):
    static = _train(tmp_path, "static", "small_cnn")
    code, _ = _attack(static, tmp_path, "--kind", "slowdown", "--eps", "8/255")
    assert code == 2 and "--kind slowdown" in capsys.readouterr().err
    code, result = _attack(static, tmp_path, "--kind", "pgd", "--eps", "0.1", "--steps", "2")
    assert code == 0 and [r["efficacy"] for r in result["records"]] == [None, None]


def test_a_gated_model_attacked_with_and_without_a_gate_cap(tmp_path):
    """All-gates-on slowdown on ConvNet-AIG: the capped rows never exceed --max-flops."""
    root = tmp_path
    (root / "aig.yaml").write_text(CONFIG.replace("{{width: 8}}", "{{depth: 14, width: 4}}").format(
        name="aig", model="convnet_aig_resnet", out=root / "runs"))
    assert main(["train", "--config", str(root / "aig.yaml")]) == 0
    checkpoint = root / "runs" / "aig" / "last.pt"
    code, probe = _attack(checkpoint, tmp_path, "--kind", "slowdown", "--eps", "0.1", "--steps", "2")
    assert code == 0
    clean, attacked = probe["records"]
    cap = (clean["mean_flops"] + attacked["max_flops"]) / 2
    code, result = _attack(checkpoint, tmp_path, "--kind", "slowdown", "--eps", "0.1", "--steps", "2",
                           "--max-flops", str(cap))
    assert code == 0
    assert [(r["attack"], r["cap"]) for r in result["records"]] == [("none", None), ("none", cap),
                                                                    ("slowdown", None), ("slowdown", cap)]
    for record in result["records"]:
        if record["cap"] is not None:
            assert record["max_flops"] <= cap
