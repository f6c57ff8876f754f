"""`dynamicnets eval --budget B --confidence C`: a budget fitted to hold on fresh data,
and the cost spread every fitted budget reports."""
import json

import pytest

from dynamicnets.cli.main import main

CONFIG = """\
name: {name}
model: {model}
model_args: {args}
data: digits
val_size: 0.2
epochs: 1
max_steps_per_epoch: 10
progress: false
"""
FAST = ["--min-run-time", "0.01", "--timed-samples", "32", "--batch-size", "64"]


def _train(root, name, model, args):
    config = root / f"{name}.yaml"
    config.write_text(CONFIG.format(name=name, model=model, args=args) + f"out_dir: {root / 'runs'}\n")
    assert main(["train", "--config", str(config)]) == 0
    return root / "runs" / name / "last.pt"


@pytest.fixture(scope="module")
def exits(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("confidence_cli"), "exits", "multi_exit_cnn", "{width: 8}")


def _eval(checkpoint, tmp_path, *args):
    out = tmp_path / "eval.json"
    code = main(["eval", "--checkpoint", str(checkpoint), "--json", str(out), *FAST, *args])
    return code, (json.loads(out.read_text())["records"] if code == 0 else None)


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_confident_budget_keeps_a_margin_and_reports_its_spread(exits, tmp_path, capsys):
    _, probe = _eval(exits, tmp_path, "--thresholds", "inf,inf")
    costs = probe["exit_costs"]
    budget = (costs[0] + costs[-1]) / 2
    _, plain = _eval(exits, tmp_path, "--budget", str(budget))
    capsys.readouterr()
    code, sure = _eval(exits, tmp_path, "--budget", str(budget), "--confidence", "0.95")
    assert code == 0
    printed = capsys.readouterr().out
    assert "expected_cost" in printed and "95% upper bound" in printed and "180 fresh samples" in printed
    spread = sure["cost_spread"]
    # the figures are for a fresh batch the size of the scored half (180 of 359)
    assert (spread["calibration_size"], spread["eval_size"], sure["samples"]) == (179, 180, 180)
    assert spread["confidence"] == sure["budget_confidence"] == 0.95 and spread["budget"] == budget
    assert spread["upper"] <= budget and spread["probability_within_budget"] >= 0.95 - 1e-9
    assert sure["calibration_mean_flops"] == spread["expected_mean"] < plain["calibration_mean_flops"] <= budget
    assert plain["cost_spread"]["upper"] is None and plain["cost_spread"]["mean_std"] > 0
    # --eval-size states another batch: a larger one needs less margin
    _, larger = _eval(exits, tmp_path, "--budget", str(budget), "--confidence", "0.95", "--eval-size", "100000")
    assert larger["cost_spread"]["eval_size"] == 100000
    assert larger["cost_spread"]["mean_std"] < spread["mean_std"]


def test_confidence_outside_0_1_or_without_a_fit_is_one_clear_error(exits, tmp_path, capsys):
    assert _eval(exits, tmp_path, "--budget", "50%", "--confidence", "1.5")[0] == 2
    line = _one_error_line(capsys)
    assert "--confidence" in line and "between 0 and 1" in line
    assert _eval(exits, tmp_path, "--budget", "50%", "--confidence", "0.9", "--eval-size", "0")[0] == 2
    assert "--eval-size" in _one_error_line(capsys)
    assert _eval(exits, tmp_path, "--thresholds", "0.5,0.5", "--confidence", "0.9")[0] == 2
    assert "given thresholds" in _one_error_line(capsys)
    assert _eval(exits, tmp_path, "--anytime", "--confidence", "0.9")[0] == 2
    assert "nothing is fitted" in _one_error_line(capsys)


def test_gate_rate_with_confidence_scales_the_rates_down(tmp_path, capsys):
    checkpoint = _train(tmp_path, "gated", "convnet_aig_resnet", "{depth: 14, width: 4}")
    _, plain = _eval(checkpoint, tmp_path, "--gate-rate", "0.5")
    code, sure = _eval(checkpoint, tmp_path, "--gate-rate", "0.5", "--confidence", "0.9")
    assert code == 0 and "90% upper bound" in capsys.readouterr().out
    assert plain["gate_rate_scale"] == 1.0 and 0.0 < sure["gate_rate_scale"] < 1.0
    assert sure["cost_spread"]["budget"] == pytest.approx(plain["cost_spread"]["budget"])
    assert sure["cost_spread"]["upper"] <= sure["cost_spread"]["budget"]
    assert sum(sure["block_execution_rate"]) < sum(plain["block_execution_rate"])
