"""RANet through the command line: masked multi-exit training on sklearn digits (8x8, so the
sub-networks run at 2x2, 4x4 and 8x8), then `eval --budget`: calibration and the compact
early-exit executor, unchanged. And the CIFAR-10 recipe under configs/."""
import json
from pathlib import Path

import pytest

from dynamicnets import create_model
from dynamicnets.cli.main import main
from dynamicnets.config import from_mapping, load_yaml
from dynamicnets.training import TrainConfig

MODEL_ARGS = {"channels": 8, "growth_rate": 4, "num_blocks": 1, "block_step": 1, "step": 2, "head_channels": 16}


def _train(tmp_path, *overrides: str):
    config = tmp_path / "ranet.yaml"
    config.write_text(
        f"name: ranet\nmodel: ranet_cifar\nmodel_args: {json.dumps(MODEL_ARGS)}\ndata: digits\nval_size: 0.2\n"
        f"batch_size: 32\nlr: 0.05\nprogress: false\nout_dir: {tmp_path / 'runs'}\n"
    )
    assert main(["train", "--config", str(config), *overrides]) == 0
    return tmp_path / "runs" / "ranet"


def _eval_with_budget(run, tmp_path, budget: str) -> dict:
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--budget", budget, "--json", str(out),
                 "--min-run-time", "0.01", "--timed-samples", "16"]) == 0
    return json.loads(out.read_text())["records"]


def test_trained_ranet_is_evaluated_under_a_budget_by_the_exit_executor(tmp_path):
    run = _train(tmp_path, "epochs=1", "max_steps_per_epoch=3")
    record = _eval_with_budget(run, tmp_path, "80%")
    costs = create_model("ranet_cifar", in_chans=1, **MODEL_ARGS).exit_costs((1, 8, 8))
    assert record["model"] == "ranet_cifar" and record["exit_costs"] == costs
    histogram = record["exit_histogram"]
    assert len(histogram) == 3 and sum(histogram) == record["samples"]
    spent = sum(n * c for n, c in zip(histogram, costs)) / record["samples"]
    assert record["mean_flops"] == pytest.approx(spent)


@pytest.mark.slow
def test_ranet_learns_digits_at_every_exit_and_keeps_its_accuracy_under_a_budget(tmp_path):
    run = _train(tmp_path, "epochs=6")
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert min(last["val_exit_accuracy"]) > 0.9, last["val_exit_accuracy"]
    record = _eval_with_budget(run, tmp_path, "80%")
    assert record["accuracy"] > 0.9
    assert record["exit_histogram"][0] > 0 and record["mean_flops"] < record["full_flops"]


def test_cifar10_config_is_a_valid_train_config_of_ranet():
    path = Path(__file__).parents[2] / "configs" / "cifar10_ranet.yaml"
    config = from_mapping(TrainConfig, load_yaml(path), source=str(path))
    assert config.model == "ranet_cifar" and config.data.startswith("cifar10:")
    model = create_model(config.model, device="meta", **config.model_args)
    assert model.num_exits == 6
