"""`dynamicnets eval --budget` on width models, fitted on one half of the split and scored on the other:
a DS-Net's gate bias, and a slimmable network's width cascade."""
from __future__ import annotations

import json

import pytest

from dynamicnets import create_model
from dynamicnets.cli.main import main

CONFIG = """name: {name}
model: {model}
model_args: {{base_width: 4, widths: [0.25, 0.5, 1.0]}}
data: digits
val_size: 0.2
epochs: 1
max_steps_per_epoch: 3
batch_size: 64
lr: 0.05
threads: 1
progress: false
"""


def train(tmp_path_factory, name: str, model: str):
    """A width model trained for 3 steps on digits; returns its last.pt."""
    out = tmp_path_factory.mktemp("runs")
    (out / f"{name}.yaml").write_text(CONFIG.format(name=name, model=model))
    assert main(["train", "--config", str(out / f"{name}.yaml"), f"out_dir={out}"]) == 0
    return out / name / "last.pt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train(tmp_path_factory, "dsnet", "dsnet_resnet_cifar")


@pytest.fixture(scope="module")
def slimmable(tmp_path_factory):
    return train(tmp_path_factory, "slim", "slimmable_resnet_cifar")


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


def width_costs() -> dict[float, int]:
    model = create_model("slimmable_resnet_cifar", num_classes=10, in_chans=1, base_width=4, widths=(0.25, 0.5, 1.0))
    return {w: model.flops((1, 8, 8), w) for w in (0.25, 0.5, 1.0)}


def test_a_budget_fits_a_width_cascade_on_half_the_split_and_scores_the_other(slimmable, tmp_path):
    costs = width_costs()
    result = run_eval(slimmable, tmp_path / "b.json", "--budget", "60%")
    chain = result["cascade_widths"]
    assert chain == sorted(chain) and chain[-1] == 1.0 and "width cascade" in result["policy"]
    assert len(result["thresholds"]) == len(chain) - 1
    assert result["budget_flops"] == pytest.approx(0.6 * costs[1.0]) and result["full_flops"] == costs[1.0]
    assert result["calibration_samples"] + result["samples"] == 359 and sum(result["width_histogram"]) == 180
    tried = {tuple(c["widths"]) for c in result["cascade_candidates"]}
    assert tried == {(0.25,), (0.5,), (1.0,), (0.25, 1.0), (0.5, 1.0), (0.25, 0.5, 1.0)}
    # samples per configured width (0.25, 0.5, 1.0) where the cascade took their prediction; each paid
    # for every width of the chain up to that one
    ended = dict(zip((0.25, 0.5, 1.0), result["width_histogram"]))
    assert sum(ended.values()) == 180 and all(ended[w] == 0 for w in ended if w not in chain)
    paid = {w: sum(costs[v] for v in chain[: i + 1]) for i, w in enumerate(chain)}
    assert result["mean_flops"] == pytest.approx(sum(ended[w] * paid[w] for w in chain) / 180)
    # a per-sample cap as dear as width 1.0 alone: every chain is cut back to what fits before the fit
    capped = run_eval(slimmable, tmp_path / "c.json", "--budget", "60%", "--max-flops", str(costs[1.0]))
    assert all(sum(costs[w] for w in c["widths"]) <= costs[1.0] for c in capped["cascade_candidates"])
    assert capped["mean_flops"] <= costs[1.0]


@pytest.mark.parametrize("rule", [["--budget-ms", "3"], ["--thresholds", "0.5"]])
def test_exit_rules_are_refused_for_a_width_cascade(slimmable, capsys, rule):
    assert main(["eval", "--checkpoint", str(slimmable), *rule]) == 2
    assert "fitted to a FLOPs budget" in capsys.readouterr().err


def test_a_budget_below_the_narrowest_width_or_another_criterion_is_a_clear_error(slimmable, capsys):
    assert main(["eval", "--checkpoint", str(slimmable), "--budget", str(width_costs()[0.25] / 2)]) == 2
    assert "cheapest reachable" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(slimmable), "--budget", "50%", "--policy", "entropy"]) == 2
    assert "max-probability thresholds" in capsys.readouterr().err
