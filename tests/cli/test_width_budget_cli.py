"""`dynamicnets eval --budget` on a DS-Net: a gate bias fitted on one half, scored on the other."""
from __future__ import annotations

import json

import pytest

from dynamicnets import create_model
from dynamicnets.cli.main import main

CONFIG = """name: dsnet
model: dsnet_resnet_cifar
model_args: {base_width: 4, widths: [0.25, 0.5, 1.0]}
data: digits
val_size: 0.2
epochs: 1
max_steps_per_epoch: 3
batch_size: 64
lr: 0.05
threads: 1
progress: false
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    (out / "dsnet.yaml").write_text(CONFIG)
    assert main(["train", "--config", str(out / "dsnet.yaml"), f"out_dir={out}"]) == 0
    return out / "dsnet" / "last.pt"


def middle_budget() -> tuple[float, list[float]]:
    """Halfway between the narrowest and the widest width's cost (gate included), and the costs."""
    model = create_model("dsnet_resnet_cifar", num_classes=10, in_chans=1, base_width=4, widths=(0.25, 0.5, 1.0))
    costs = (model.width_costs((1, 8, 8)) + model.gate_flops((1, 8, 8))).tolist()
    return (costs[0] + costs[-1]) / 2, costs


def run_eval(checkpoint, record, *options) -> dict:
    assert main(["eval", "--checkpoint", str(checkpoint), "--json", str(record), "--min-run-time", "0.01",
                 "--timed-samples", "4", *options]) == 0
    return json.loads(record.read_text())["records"]


def test_a_budget_fits_a_width_policy_on_half_the_split_and_scores_the_other(checkpoint, tmp_path):
    budget, costs = middle_budget()
    result = run_eval(checkpoint, tmp_path / "b.json", "--budget", str(budget))
    assert "width policy" in result["policy"] and len(result["width_policy"]["bias"]) == 3
    assert result["width_policy"]["meta"]["mean_flops"] <= budget == result["budget_flops"]
    assert result["calibration_samples"] + result["samples"] == 359 and sum(result["width_histogram"]) == 180
    capped = run_eval(checkpoint, tmp_path / "c.json", "--budget", "100%", "--max-flops", str(costs[0]))
    assert capped["width_histogram"] == [180, 0, 0] and capped["mean_flops"] == pytest.approx(costs[0])


@pytest.mark.parametrize("rule", [["--budget-ms", "3"], ["--thresholds", "0.5"]])
def test_exit_rules_are_refused_for_a_width_gate(checkpoint, capsys, rule):
    assert main(["eval", "--checkpoint", str(checkpoint), *rule]) == 2
    assert "picks a width per sample" in capsys.readouterr().err


def test_a_budget_fraction_is_of_the_gate_plus_the_widest_width(checkpoint, tmp_path):
    _, costs = middle_budget()
    result = run_eval(checkpoint, tmp_path / "f.json", "--budget", "100%")
    assert result["budget_flops"] == pytest.approx(costs[-1]) and result["full_flops"] == pytest.approx(costs[-1])
    # the whole budget is spendable: every sample runs the widest width
    assert result["width_histogram"] == [0, 0, 180] and result["mean_flops"] == pytest.approx(costs[-1])


def test_a_confident_budget_keeps_a_margin_and_says_what_it_expects(checkpoint, tmp_path):
    budget, _ = middle_budget()
    plain = run_eval(checkpoint, tmp_path / "p.json", "--budget", str(budget))
    sure = run_eval(checkpoint, tmp_path / "s.json", "--budget", str(budget), "--confidence", "0.95")
    assert sure["budget_confidence"] == 0.95 and "expected_cost" in sure
    assert sure["cost_spread"]["upper"] <= budget and sure["cost_spread"]["eval_size"] == 180
    assert sure["width_policy"]["meta"]["mean_flops"] <= plain["width_policy"]["meta"]["mean_flops"]


def test_export_ships_a_width_cap_and_the_folder_checks_out(checkpoint, tmp_path, capsys):
    _, costs = middle_budget()
    out = tmp_path / "deployed"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--max-flops", str(costs[1])]) == 0
    printed = capsys.readouterr().out
    assert "check_decisions_equal: True" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["policy"]["kind"] == "width_cap" and manifest["policy"]["max_flops"] == costs[1]
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x"), "--thresholds", "0.5"]) == 2
    assert "picks a width per sample" in capsys.readouterr().err
