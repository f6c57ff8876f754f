"""`dynamicnets export --budget`: the rule is fitted on the validation split (as `eval --budget`
fits it, but on the whole split), shipped in the manifest, and the folder runs it; shipped
weights export with `--model --pretrained`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynamicnets.cli.main import main
from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.deploy import DeployedModel
from dynamicnets.inference import ExitPolicy, calibrate_thresholds, collect_exit_logits, run_early_exit
from dynamicnets.inference.width_cascade_fit import collect_width_logits, fit_width_cascade
from dynamicnets.models.width.width_cascade import WidthCascade
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.pipelines.export import ExportRequest, export_checkpoint
from dynamicnets.pipelines.zoo import ZooExport, ZooPaths, export_run
from dynamicnets.training import TrainConfig, Trainer

CIFAR = Path(__file__).resolve().parents[2] / "data" / "cifar-10-batches-py"


def _train(root: Path, name: str, model: str, **args) -> Path:
    Trainer(TrainConfig(name=name, model=model, model_args=args, data="digits", val_size=0.2, epochs=1,
                        batch_size=64, lr=0.05, max_steps_per_epoch=6, threads=1, device="cpu", out_dir=str(root),
                        progress=False)).fit()
    return root / name / "last.pt"


@pytest.fixture(scope="module")
def exits(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs"), "exits", "multi_exit_cnn", width=4)


@pytest.fixture(scope="module")
def slimmable(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs"), "slim", "slimmable_resnet_cifar", base_width=4,
                  widths=[0.25, 0.5, 1.0])


def exits_path(root: Path) -> Path:
    return _train(root / "exit_runs", "exits", "multi_exit_cnn", width=4)


def _validation(ckpt_path: Path):
    model, ckpt = load_trained_model(ckpt_path)
    bundle = load_data("digits", val_size=0.2, seed=0, augment=False)
    return model, ckpt, bundle.val


def test_a_budget_fits_exit_thresholds_on_the_whole_validation_split_and_ships_them(exits, tmp_path, capsys):
    out = tmp_path / "deployed"
    assert main(["export", "--checkpoint", str(exits), "--out", str(out), "--budget", "60%"]) == 0
    printed = capsys.readouterr().out
    assert "check_decisions_equal: True" in printed and "fitted_accuracy" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    fitted = manifest["metadata"]["fitted"]

    # the same fit, done by hand on the same 20% validation split
    model, ckpt, val = _validation(exits)
    costs = list(model.exit_costs(tuple(ckpt["input_shape"])))
    logits, targets = collect_exit_logits(model, make_eval_loader(val, 256))
    expected = calibrate_thresholds(logits, targets, costs, 0.6 * costs[-1])
    assert manifest["policy"]["thresholds"] == pytest.approx(list(expected.policy.thresholds))
    assert fitted["budget_flops"] == pytest.approx(0.6 * costs[-1])
    assert fitted["fitted_samples"] == len(val) and "validation" in fitted["fitted_on"]
    assert fitted["fitted_mean_flops"] == pytest.approx(expected.mean_flops)
    assert fitted["fitted_accuracy"] == pytest.approx(expected.accuracy)

    x = torch.stack([val[i][0] for i in range(32)])
    policy = ExitPolicy("maxprob", manifest["policy"]["thresholds"])
    ours, ref = DeployedModel.load(out)(x), run_early_exit(model, x, policy)
    assert torch.equal(ours.decisions["exit_index"], ref.exit_index)
    torch.testing.assert_close(ours.logits, ref.logits)


def test_a_budget_exports_a_slimmable_network_as_its_fitted_width_cascade(slimmable, tmp_path, capsys):
    out = tmp_path / "cascade"
    assert main(["export", "--checkpoint", str(slimmable), "--out", str(out), "--budget", "50%"]) == 0
    assert "check_decisions_equal: True" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    fitted = manifest["metadata"]["fitted"]

    model, ckpt, val = _validation(slimmable)
    shape = tuple(ckpt["input_shape"])
    costs = {float(w): float(model.flops(shape, w)) for w in model.widths}
    logits, targets = collect_width_logits(model, make_eval_loader(val, 256))
    fit = fit_width_cascade(logits, targets, costs, 0.5 * costs[1.0])
    assert fitted["cascade_widths"] == list(fit.widths)
    assert manifest["policy"]["thresholds"] == pytest.approx(list(fit.calibration.policy.thresholds))
    assert len(manifest["graphs"]) >= len(fit.widths)  # at least one graph per width in the chain
    assert fitted["budget_flops"] == pytest.approx(0.5 * costs[1.0])
    assert fitted["fitted_mean_flops"] <= fitted["budget_flops"] * (1 + 1e-9)
    assert manifest["metadata"]["model_name"] == "slimmable_resnet_cifar"

    cascade = WidthCascade(model, fit.widths).eval()
    x = torch.stack([val[i][0] for i in range(32)])
    ours = DeployedModel.load(out)(x)
    ref = run_early_exit(cascade, x, ExitPolicy("maxprob", manifest["policy"]["thresholds"]))
    assert torch.equal(ours.decisions["exit_index"], ref.exit_index)
    torch.testing.assert_close(ours.logits, ref.logits)


def test_a_cap_with_a_budget_fits_the_thresholds_over_the_exits_it_affords(exits, tmp_path):
    model, ckpt, val = _validation(exits)
    costs = list(model.exit_costs(tuple(ckpt["input_shape"])))
    out = tmp_path / "capped"
    assert main(["export", "--checkpoint", str(exits), "--out", str(out), "--budget", "60%",
                 "--max-flops", str(costs[1])]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    fitted = manifest["metadata"]["fitted"]
    logits, targets = collect_exit_logits(model, make_eval_loader(val, 256))
    budget = min(0.6 * costs[-1], costs[1])
    expected = calibrate_thresholds(logits[:2], targets, costs[:2], budget)
    assert manifest["policy"]["thresholds"] == pytest.approx([*expected.policy.thresholds, float("inf")])
    assert manifest["policy"]["max_flops"] == costs[1]
    assert fitted["fitted_mean_flops"] == pytest.approx(expected.mean_flops) and fitted["fitted_mean_flops"] <= budget


def test_a_confident_budget_is_recorded_and_keeps_a_margin(exits, tmp_path):
    out = tmp_path / "confident"
    assert main(["export", "--checkpoint", str(exits), "--out", str(out), "--budget", "60%", "--confidence", "0.95",
                 "--eval-size", "100"]) == 0
    fitted = json.loads((out / "manifest.json").read_text())["metadata"]["fitted"]
    assert fitted["budget_confidence"] == 0.95 and "100 fresh samples" in fitted["expected_cost"]
    assert fitted["fitted_mean_flops"] < fitted["budget_flops"]


@pytest.mark.parametrize("options, words", [
    (["--budget", "50%", "--thresholds", "0.5,0.5"], "--budget and --thresholds"),
    (["--data", "digits"], "nothing is fitted"),
    (["--budget", "1%"], "below the first exit"),
    (["--budget", "half"], "cannot read 'half'"),
    (["--budget", "50%", "--criterion", "fastest"], "--criterion (--policy): expected one of"),
    (["--max-flops", "1"], "below the cheapest exit"),
])
def test_conflicting_or_impossible_budgets_are_one_clear_error(exits, tmp_path, capsys, options, words):
    assert main(["export", "--checkpoint", str(exits), "--out", str(tmp_path / "x"), *options]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("model, args, key", [
    ("dsnet_resnet_cifar", {"base_width": 4, "widths": [0.25, 0.5, 1.0]}, "width_policy"),
    ("dynamic_resolution_resnet", {"depth": 8, "width": 4, "resolutions": [4, 6, 8]}, "resolution_policy"),
])
def test_a_predictor_policy_is_fitted_and_shipped(model, args, key, tmp_path, capsys):
    checkpoint = _train(tmp_path / "runs", "predictor", model, **args)
    out = tmp_path / "deployed"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--budget", "60%"]) == 0
    assert "check_decisions_equal: True" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    fitted = manifest["metadata"]["fitted"]
    assert fitted[key]["bias"] == manifest["policy"]["bias"] and fitted["fitted_samples"] == 359
    assert fitted["fitted_mean_flops"] <= fitted["budget_flops"] * (1 + 1e-9)
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x"), "--budget", "60%",
                 "--criterion", "entropy"]) == 2
    assert "--criterion entropy" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_model_without_a_rule_to_fit_refuses_a_budget(tmp_path, capsys):
    static = _train(tmp_path / "runs", "static", "small_cnn", width=4)
    assert main(["export", "--checkpoint", str(static), "--out", str(tmp_path / "x"), "--budget", "50%"]) == 2
    assert "no exit thresholds, width, resolution or keep-ratio rule" in capsys.readouterr().err


def test_shipped_weights_export_from_the_registry_at_a_budget(exits, tmp_path):
    weights = tmp_path / "weights"
    export_run(ZooExport(run=exits, tag="digits", paths=ZooPaths(  # data=None: no trade-off measured
        weights_dir=weights, cards_dir=tmp_path / "cards", zoo_table=tmp_path / "zoo.json", repo_root=tmp_path)))
    summary = export_checkpoint(ExportRequest(checkpoint=None, model="multi_exit_cnn", pretrained="digits",
                                              pretrained_dir=str(weights), out_dir=str(tmp_path / "deployed"),
                                              budget_fraction=0.6, data="digits"))
    assert summary["check_decisions_equal"] and summary["check_max_logit_difference"] < 1e-4
    metadata = json.loads((tmp_path / "deployed" / "manifest.json").read_text())["metadata"]
    assert metadata["pretrained"] == "digits" and len(metadata["sha256"]) == 64
    assert metadata["fitted"]["fitted_samples"] == 359  # the split the weights were validated on


def test_shipped_weights_need_data_for_a_budget_and_one_source(tmp_path, capsys):
    assert main(["export", "--model", "resnet_exits", "--pretrained", "cifar10", "--out", str(tmp_path / "x"),
                 "--budget", "70%"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "x")]) == 2
    assert "--checkpoint CK, or --model NAME --pretrained" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_dir(), reason="needs the CIFAR-10 python files")
def test_the_shipped_exit_model_exports_at_a_budget_fitted_on_cifar(tmp_path, capsys):
    out = tmp_path / "resnet_exits"
    assert main(["export", "--model", "resnet_exits", "--pretrained", "cifar10", "--data", f"cifar10:{CIFAR}",
                 "--out", str(out), "--budget", "70%"]) == 0
    assert "check_decisions_equal: True" in capsys.readouterr().out
    fitted = json.loads((out / "manifest.json").read_text())["metadata"]["fitted"]
    assert fitted["fitted_samples"] == 5000 and fitted["fitted_mean_flops"] <= fitted["budget_flops"] * 1.0001
    assert 0.85 < fitted["fitted_accuracy"] < 0.95


def test_a_gate_rate_is_fitted_into_the_gates_and_the_folder_runs_it(tmp_path, capsys):
    checkpoint = _train(tmp_path / "runs", "aig", "convnet_aig_resnet", depth=14, width=4)
    out = tmp_path / "deployed"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--gate-rate", "0.5"]) == 0
    assert "check_decisions_equal: True" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    fitted = manifest["metadata"]["fitted"]
    assert fitted["gate_rate"] == 0.5 and fitted["fitted_samples"] == 359
    model, _ = load_trained_model(checkpoint)
    full = model.full_flops((1, 8, 8))
    assert fitted["fitted_mean_flops"] < full  # blocks are skipped
    _, _, val = _validation(checkpoint)
    x = torch.stack([val[i][0] for i in range(len(val))])
    executed = DeployedModel.load(out)(x).decisions["gates"].float().mean()
    assert executed == pytest.approx(0.5, abs=0.1)  # about half of the validation samples run each block
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x"), "--gate-rate", "0.5",
                 "--thresholds", "0"]) == 2
    assert "--gate-rate and --thresholds" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(exits_path(tmp_path)), "--out", str(tmp_path / "y"),
                 "--gate-rate", "0.5"]) == 2
    assert "no layer-skipping gates" in capsys.readouterr().err


def test_policy_is_the_same_option_as_criterion_as_in_eval(exits, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(exits), "--out", str(tmp_path / "x"), "--policy", "vibes"]) == 2
    assert "--criterion (--policy): expected one of" in capsys.readouterr().err and not (tmp_path / "x").exists()
