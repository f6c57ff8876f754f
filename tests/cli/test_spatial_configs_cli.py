"""The shipped spatial recipes through the command line: each `configs/cluttered_mnist_*.yaml`
trains one step with `dynamicnets train --config` on a small MNIST folder written here (its
canvases generated and cached as in a real run), then `dynamicnets eval` scores the run
(dynamic resolution also under a FLOPs budget) and `dynamicnets export` deploys it. The CIFAR-10 recipes are checked as
configs (their data is real CIFAR-10)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynamicnets import create_model
from dynamicnets.cli.main import main
from dynamicnets.config import from_mapping, load_yaml
from dynamicnets.training import TrainConfig

CONFIGS = Path(__file__).parents[2] / "configs"
CLUTTERED = ["cluttered_mnist_stn_cnn", "cluttered_mnist_glance_focus", "cluttered_mnist_dynamic_resolution"]
SMALLER = {  # the recipes' models at their canvas size, narrower (one step must be quick)
    "cluttered_mnist_stn_cnn": ["model_args.width=4", "model_args.loc_width=4"],
    "cluttered_mnist_glance_focus": ["model_args.width=4", "model_args.hidden=16"],
    "cluttered_mnist_dynamic_resolution": ["model_args.depth=8", "model_args.width=4"],
}


def _idx(values: np.ndarray) -> bytes:
    values = np.asarray(values, dtype=np.uint8)
    magic = 0x0800 | values.ndim
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in values.shape) + values.tobytes()


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    """A folder of 48 random 28x28 'digits' in MNIST's IDX layout (training split only)."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    (root / "train-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (48, 28, 28))))
    (root / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(48) % 10))
    return root


def _train(name: str, mnist: Path, out: Path) -> Path:
    config = from_mapping(TrainConfig, load_yaml(CONFIGS / f"{name}.yaml"), source=name)
    options = config.data.partition("?")[2]  # the recipe's canvas options, on the small MNIST folder
    assert "canvas=60" in options and "cache=" in options
    options = options.replace("cache=runs/data", f"cache={out / 'data'}")
    overrides = [f"data=cluttered_mnist:{mnist}?{options}", "epochs=1", "max_steps_per_epoch=1", "batch_size=8",
                 "val_size=8", f"out_dir={out}", "channels_last=false", *SMALLER[name]]
    assert main(["train", "--config", str(CONFIGS / f"{name}.yaml"), *overrides]) == 0
    assert (out / "data" / "cluttered_60x60_cluttered8_0.pt").is_file()  # cached where the recipe says
    return out / config.name / "best.pt"


@pytest.mark.parametrize("name", CLUTTERED)
def test_cluttered_recipe_trains_and_evaluates(name, mnist, tmp_path, capsys):
    checkpoint = _train(name, mnist, tmp_path)
    record = tmp_path / "eval.json"
    extra = ["--budget", "80%"] if name == "cluttered_mnist_glance_focus" else []
    assert main(["eval", "--checkpoint", str(checkpoint), "--json", str(record), "--min-run-time", "0.01",
                 "--timed-samples", "4", *extra]) == 0
    result = json.loads(record.read_text())["records"]
    budgeted = name == "cluttered_mnist_glance_focus"  # fitted on half the split, scored on the other
    assert result["samples"] == (4 if budgeted else 8) and 0.0 <= result["accuracy"] <= 1.0
    if name == "cluttered_mnist_dynamic_resolution":
        # the full cost is every sample at 60x60, whatever resolution a zero input would pick
        model = create_model("dynamic_resolution_resnet", in_chans=1, depth=8, width=4, resolutions=[28, 42, 60])
        costs = model.resolution_costs((1, 60, 60))
        assert result["full_flops"] == costs[-1]
        assert result["speedup_flops"] == pytest.approx(result["full_flops"] / result["mean_flops"])
        histogram = result["resolution_histogram"]
        assert sum(histogram) == 8 and result["mean_flops"] == pytest.approx(
            sum(n * c for n, c in zip(histogram, costs)) / 8)
        _budgeted_resolution(checkpoint, costs, tmp_path, capsys)
    if budgeted:  # the exit executor ran: samples spread over the glance and focus steps
        assert sum(result["exit_histogram"]) == 4 and len(result["exit_histogram"]) == 4
    capsys.readouterr()
    if name == "cluttered_mnist_dynamic_resolution":  # refused before anything is traced, the model named
        assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "deployed"),
                     "--thresholds", "0.5"]) == 2
        assert "'dynamic_resolution_resnet' picks a resolution per sample" in capsys.readouterr().err


def _budgeted_resolution(checkpoint: Path, costs: list[int], tmp_path: Path, capsys) -> None:
    """`eval --budget` on a dynamic-resolution run: a resolution policy fitted on half the
    validation split (the budget between the two cheapest resolutions forces a bias), scored
    on the other half; `--max-flops` caps every sample."""
    record = tmp_path / "budget.json"
    budget = (costs[0] + costs[1]) / 2
    assert main(["eval", "--checkpoint", str(checkpoint), "--budget", str(budget), "--json", str(record),
                 "--min-run-time", "0.01", "--timed-samples", "4"]) == 0
    result = json.loads(record.read_text())["records"]
    assert result["samples"] == 4 and result["calibration_samples"] == 4 and "resolution policy" in result["policy"]
    assert result["budget_flops"] == budget and len(result["resolution_policy"]["bias"]) == 3
    assert sum(result["resolution_histogram"]) == 4
    assert main(["eval", "--checkpoint", str(checkpoint), "--budget", "100%", "--max-flops", str(costs[0]),
                 "--json", str(record), "--min-run-time", "0.01", "--timed-samples", "4"]) == 0
    capped = json.loads(record.read_text())["records"]
    assert capped["resolution_histogram"] == [4, 0, 0] and capped["mean_flops"] == costs[0]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--budget-ms", "3"]) == 2
    assert "'dynamic_resolution_resnet' picks a resolution per sample" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", CLUTTERED)
def test_cluttered_recipe_exports_and_the_folder_checks_out(name, mnist, tmp_path, capsys):
    checkpoint = _train(name, mnist, tmp_path)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "deployed"),
                 "--format", "onnx"]) == 0
    printed = capsys.readouterr().out
    assert "check_decisions_equal: True" in printed
    kind = {"cluttered_mnist_stn_cnn": "static", "cluttered_mnist_glance_focus": "early_exit",
            "cluttered_mnist_dynamic_resolution": "resolution"}[name]
    assert f"kind: {kind}" in printed


@pytest.mark.parametrize("name", ["cifar10_dynamic_resolution_resnet20", "cifar10_ranet"])
def test_cifar_recipes_are_valid_configs_of_their_models(name):
    config = from_mapping(TrainConfig, load_yaml(CONFIGS / f"{name}.yaml"), source=name)
    assert config.data.startswith("cifar10:")
    model = create_model(config.model, device="meta", **config.model_args)
    assert model.default_input_shape == (3, 32, 32)
