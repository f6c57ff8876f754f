"""`dynamicnets eval --anchor`: a static network scored on the same samples and timed in the same run."""
import json

import pytest

from dynamicnets.cli.main import main

FAST = ["--min-run-time", "0.01", "--batch-size", "64", "--timed-samples", "64"]


def _train(root, name, model, config):
    args = ["train", "--config", config, f"out_dir={root}", f"name={name}", f"model={model}",
            "epochs=1", "max_steps_per_epoch=8", "progress=false"]
    assert main(args) == 0
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_anchor")
    return {"skip_gru": _train(root, "skip_gru", "skip_gru_classifier", "mnist1d_cnn"),
            "gru": _train(root, "gru", "gru_classifier", "mnist1d_cnn"),
            "exits": _train(root, "exits", "multi_exit_cnn", "digits_small_cnn"),
            "cnn": _train(root, "cnn", "small_cnn", "digits_small_cnn")}


def _eval(tmp_path, *args):
    out = tmp_path / "eval.json"
    code = main(["eval", "--json", str(out), *FAST, *args])
    return code, (json.loads(out.read_text())["records"] if code == 0 else None)


def test_anchor_is_scored_on_the_same_samples_and_timed_in_the_same_run(runs, tmp_path, capsys):
    code, result = _eval(tmp_path, "--checkpoint", str(runs["skip_gru"]), "--anchor", str(runs["gru"]))
    assert code == 0
    _, alone = _eval(tmp_path, "--checkpoint", str(runs["gru"]))  # the anchor scored on its own
    assert result["anchor"] == str(runs["gru"] / "best.pt")
    assert result["anchor_accuracy"] == pytest.approx(alone["accuracy"])
    assert result["accuracy_vs_anchor"] == pytest.approx(result["accuracy"] - alone["accuracy"])
    assert result["anchor_flops"] == pytest.approx(alone["full_flops"])
    assert result["speedup_flops_vs_anchor"] > 0 and result["speedup_measured_vs_anchor"] > 0
    assert result["speedup_vs_anchor_batch1"] > 0
    assert result["realized_fraction_vs_anchor"] == pytest.approx(
        result["speedup_measured_vs_anchor"] / result["speedup_flops_vs_anchor"])
    out = capsys.readouterr().out
    assert "speedup_measured_vs_anchor:" in out and "anchor_accuracy:" in out


def test_a_multi_exit_model_is_measured_against_the_anchor_under_its_fitted_rule(runs, tmp_path):
    code, result = _eval(tmp_path, "--checkpoint", str(runs["exits"]), "--anchor", str(runs["cnn"]),
                         "--thresholds", "0,0")  # every sample leaves at the first exit
    assert code == 0
    assert result["exit_histogram"][0] == result["samples"]
    assert result["speedup_flops_vs_anchor"] == pytest.approx(result["anchor_flops"] / result["exit_costs"][0])
    assert result["anchor_flops"] > result["exit_costs"][0]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_anchor_that_reads_other_inputs_or_is_dynamic_is_refused_by_name(runs, tmp_path, capsys):
    assert _eval(tmp_path, "--checkpoint", str(runs["exits"]), "--thresholds", "0,0",
                 "--anchor", str(runs["gru"]))[0] == 2
    line = _error(capsys)
    assert "--anchor" in line and "same inputs" in line
    assert _eval(tmp_path, "--checkpoint", str(runs["cnn"]), "--anchor", str(runs["exits"]))[0] == 2
    assert "has early exits" in _error(capsys)
    assert _eval(tmp_path, "--checkpoint", str(runs["gru"]), "--anchor", str(runs["skip_gru"]))[0] == 2
    assert "skips computation per input" in _error(capsys)
    assert _eval(tmp_path, "--checkpoint", str(runs["exits"]), "--anytime", "--anchor", str(runs["cnn"]))[0] == 2
    assert "--anytime alone runs no exit rule" in _error(capsys)
    assert _eval(tmp_path, "--checkpoint", str(runs["cnn"]), "--anchor", str(tmp_path / "nothing"))[0] == 2
    assert "not NAME:TAG" in _error(capsys)
    assert _eval(tmp_path, "--checkpoint", str(runs["cnn"]), "--anchor", "resnet20:no_such_tag")[0] == 2
    assert "no_such_tag" in _error(capsys)
