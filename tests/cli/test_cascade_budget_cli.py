"""`dynamicnets eval --budget` on a slimmable network: a width cascade fitted on one half, scored on the other."""
from __future__ import annotations

import json

import pytest

from dynamicnets import create_model
from dynamicnets.cli.main import main

CONFIG = """name: slim
model: slimmable_resnet_cifar
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
    (out / "slim.yaml").write_text(CONFIG)
    assert main(["train", "--config", str(out / "slim.yaml"), f"out_dir={out}"]) == 0
    return out / "slim" / "last.pt"


def width_costs() -> dict[float, int]:
    model = create_model("slimmable_resnet_cifar", num_classes=10, in_chans=1, base_width=4, widths=(0.25, 0.5, 1.0))
    return {w: model.flops((1, 8, 8), w) for w in (0.25, 0.5, 1.0)}


def run_eval(checkpoint, record, *options) -> dict:
    assert main(["eval", "--checkpoint", str(checkpoint), "--json", str(record), "--min-run-time", "0.01",
                 "--timed-samples", "4", *options]) == 0
    return json.loads(record.read_text())["records"]


def test_a_budget_fits_a_width_cascade_on_half_the_split_and_scores_the_other(checkpoint, tmp_path):
    costs = width_costs()
    result = run_eval(checkpoint, tmp_path / "b.json", "--budget", "60%")
    chain = result["cascade_widths"]
    assert chain == sorted(chain) and chain[-1] == 1.0 and "width cascade" in result["policy"]
    assert len(result["thresholds"]) == len(chain) - 1
    assert result["budget_flops"] == pytest.approx(0.6 * costs[1.0]) and result["full_flops"] == costs[1.0]
    assert result["calibration_samples"] + result["samples"] == 359 and sum(result["width_histogram"]) == 180
    tried = {tuple(c["widths"]) for c in result["cascade_candidates"]}
    assert tried == {(0.25, 1.0), (0.5, 1.0), (0.25, 0.5, 1.0)}
    # what each sample paid: every width of the chain up to the one it ended at
    paid = [sum(costs[w] for w in chain[: i + 1]) for i in range(len(chain))]
    assert result["mean_flops"] == pytest.approx(sum(n * c for n, c in zip(result["width_histogram"], paid)) / 180)
    # a per-sample cap stops every sample at the first width
    capped = run_eval(checkpoint, tmp_path / "c.json", "--budget", "60%", "--max-flops", str(paid[0]))
    assert capped["width_histogram"][0] == 180 and capped["mean_flops"] == pytest.approx(paid[0])


@pytest.mark.parametrize("rule", [["--budget-ms", "3"], ["--thresholds", "0.5"]])
def test_exit_rules_are_refused_for_a_width_cascade(checkpoint, capsys, rule):
    assert main(["eval", "--checkpoint", str(checkpoint), *rule]) == 2
    assert "fitted to a FLOPs budget" in capsys.readouterr().err


def test_a_budget_below_the_narrowest_width_is_a_clear_error(checkpoint, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--budget", str(width_costs()[0.25] / 2)]) == 2
    assert "cheapest reachable" in capsys.readouterr().err
