"""Shipping a finished run as pretrained weights: file, registry row, card, zoo table."""
import json
import shutil
from dataclasses import replace

import pytest
import torch

from dynamicnets import ConfigError, create_model
from dynamicnets.models.pretrained import read_registry, sha256_file
from dynamicnets.pipelines.evaluate import EvalRequest, evaluate_checkpoint
from dynamicnets.pipelines.model_card import render_model_card
from dynamicnets.pipelines.zoo import ZooExport, ZooPaths, export_run, robust_epoch_seconds
from dynamicnets.pipelines.zoo_trade_off import curve_budgets
from dynamicnets.training import TrainConfig, Trainer, load_checkpoint, save_checkpoint


def _train(root, name, model, **args):
    Trainer(TrainConfig(name=name, model=model, model_args=args, data="digits", val_size=0.2, epochs=2,
                        batch_size=64, lr=0.05, max_steps_per_epoch=4, threads=1, device="cpu", out_dir=str(root),
                        progress=False)).fit()
    return root / name


@pytest.fixture(scope="module")
def static_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs"), "digits_cnn", "small_cnn", width=8)


def _paths(root):
    return ZooPaths(weights_dir=root / "weights", cards_dir=root / "cards",
                    zoo_table=root / "results" / "model_zoo.json", repo_root=root)


def test_export_writes_weights_that_load_back_with_their_hash_and_score(static_run, tmp_path):
    paths = _paths(tmp_path)
    row = export_run(ZooExport(run=static_run, tag="digits", paths=paths, data="digits"))
    shipped = paths.weights_dir / "small_cnn_digits.pt"
    assert row.file == shipped.name and sha256_file(shipped) == row.sha256
    best = load_checkpoint(static_run / "best.pt")
    model = create_model("small_cnn", pretrained="digits", pretrained_dir=paths.weights_dir)
    assert all(torch.equal(model.state_dict()[k], best["model"][k].float()) for k in best["model"])
    history = [json.loads(line) for line in (static_run / "metrics.jsonl").read_text().splitlines()]
    assert row.val_accuracy == next(r["val_accuracy"] for r in history if r["epoch"] == best["epoch"])
    assert row.details["rescored"]["val_accuracy"] == pytest.approx(row.val_accuracy, abs=1e-9)
    assert row.cpu_hours == pytest.approx(sum(r["epoch_seconds"] for r in history) / 3600)
    assert row.params == sum(p.numel() for p in model.parameters()) and row.flops > 0
    assert row.data == {**row.data, "name": "digits", "val_size": 0.2, "seed": 0}

    card = (paths.cards_dir / "small_cnn_digits.md").read_text()
    for expected in ("## Data and split", "## Recipe", "## Compute", f"{100 * row.val_accuracy:.2f}%",
                     row.sha256, "dynamicnets train --config digits_cnn",
                     "dynamicnets eval --model small_cnn --pretrained digits", "small_cnn_digits_val_accuracy.png"):
        assert expected in card, expected
    assert "trade-off" not in card  # a static model has no trade-off to show
    assert (paths.cards_dir / "small_cnn_digits_val_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    records = json.loads(paths.zoo_table.read_text())["records"]
    assert [(r["model"], r["pretrained"]) for r in records] == [("small_cnn", "digits")]
    assert set(records[0]) >= {"model", "pretrained", "val_accuracy", "params", "flops", "cpu_hours"}
    assert paths.zoo_table.with_suffix(".md").read_text().startswith("| model")

    # the same pretrained weights through `dynamicnets eval`'s pipeline: same split, same score
    result = evaluate_checkpoint(EvalRequest(model="small_cnn", pretrained=True, pretrained_dir=str(paths.weights_dir),
                                             data="digits", min_run_time=0.01, timed_samples=32))
    assert result["accuracy"] == pytest.approx(row.val_accuracy, abs=1e-9)
    assert result["pretrained"] == "digits" and result["sha256"] == row.sha256


def test_exporting_again_replaces_the_row_with_identical_bytes_and_keeps_other_tags(static_run, tmp_path):
    paths = _paths(tmp_path)
    first = export_run(ZooExport(run=static_run, tag="digits", paths=paths))
    again = export_run(ZooExport(run=static_run, tag="digits", paths=paths))
    assert again.sha256 == first.sha256
    export_run(ZooExport(run=static_run, tag="digits_b", paths=paths, default=True))
    rows = read_registry(paths.weights_dir)
    assert [(w.tag, w.default) for w in rows] == [("digits", False), ("digits_b", True)]
    assert create_model("small_cnn", pretrained=True, pretrained_dir=paths.weights_dir) is not None
    assert len(json.loads(paths.zoo_table.read_text())["records"]) == 2


def test_an_unfinished_run_is_refused(static_run, tmp_path):
    run = tmp_path / "unfinished"
    run.mkdir()
    ckpt = load_checkpoint(static_run / "last.pt")
    ckpt["config"]["epochs"] = 5
    save_checkpoint(run / "last.pt", ckpt)
    shutil.copy(static_run / "metrics.jsonl", run / "metrics.jsonl")
    with pytest.raises(ConfigError, match="last checkpoint holds epoch 2 of 5; only finished runs are shipped"):
        export_run(ZooExport(run=run, tag="digits", paths=_paths(tmp_path)))
    assert not (tmp_path / "weights").exists()


def test_cpu_hours_count_stalled_epochs_at_the_median():
    history = [{"epoch": e, "epoch_seconds": s} for e, s in enumerate([100, 110, 90, 3700, 105], start=1)]
    times = robust_epoch_seconds(history, outlier_factor=2.0)
    assert times["median_epoch_seconds"] == 105 and times["replaced_epochs"] == [4]
    assert times["seconds"] == 100 + 110 + 90 + 105 + 105 and times["recorded_seconds"] == 4105


def test_the_exit_curve_always_holds_the_target_budget():
    assert curve_budgets([10.0, 20.0, 100.0], 3) == [10.0, 55.0, 70.0, 100.0]
    assert curve_budgets([10.0, 100.0], 4) == [10.0, 40.0, 70.0, 100.0]  # already a point: not repeated
    assert curve_budgets([80.0, 100.0], 2) == [80.0, 100.0]  # the first exit already costs more


@pytest.mark.slow
def test_a_multi_exit_model_gets_its_measured_trade_off_on_the_card(tmp_path):
    """End to end (about 6 s of CPU, mostly timing): train, export, fit, time, card."""
    run = _train(tmp_path / "runs", "digits_exits", "multi_exit_cnn")
    paths = _paths(tmp_path)
    row = export_run(ZooExport(run=run, tag="digits", paths=paths, data="digits", budgets=2, min_run_time=0.01))
    trade_off = row.details["trade_off"]
    curve = trade_off["curve"]
    assert [p["budget_flops"] for p in curve] == curve_budgets(trade_off["exit_costs"], 2)
    assert curve[-1]["exit_histogram"][:-1] == [0, 0]
    first, last = curve[0], curve[-1]
    assert first["mean_flops"] < last["mean_flops"] == pytest.approx(trade_off["exit_costs"][-1])
    for point in trade_off["curve"]:
        assert point["speedup_measured_b1"] > 0 and point["speedup_measured_b256"] > 0
    card = (paths.cards_dir / "multi_exit_cnn_digits.md").read_text()
    assert "## Accuracy-FLOPs trade-off" in card and "measured b256" in card and "--anytime" in card
    assert (paths.cards_dir / "multi_exit_cnn_digits_accuracy_flops.png").is_file()


def test_the_card_shows_a_dynamic_models_trade_off_when_measured_and_says_so_when_not(static_run, tmp_path):
    row = export_run(ZooExport(run=static_run, tag="digits", paths=_paths(tmp_path)))
    point = {"budget_flops": 1e6, "thresholds": [0.9, None], "accuracy": 0.8, "mean_flops": 1.2e6,
             "speedup_flops": 2.0, "exit_histogram": [60, 30, 10], "speedup_measured_b1": 1.5,
             "speedup_flops_b1": 2.1, "speedup_measured_b256": 1.7, "speedup_flops_b256": 1.9}
    trade_off = {"protocol": "Fitted on one half, scored on the other", "calibration_samples": 180,
                 "evaluation_samples": 180, "exit_costs": [1e6, 2e6, 2.4e6],
                 "anytime": [{"exit": 0, "flops": 1e6, "accuracy": 0.7}], "curve": [point]}
    dynamic = replace(row, details={**row.details, "family": "depth", "dynamic": True, "multi_exit": True,
                                    "trade_off": trade_off})
    card = render_model_card(dynamic, {"curve": "c.png", "trade_off": "t.png"})
    section = card.split("## Accuracy-FLOPs trade-off")[1].split("## Limitations")[0]
    assert "Fitted on one half" in section and "exit 0: 70.00% at 1M" in section
    assert "![accuracy vs. FLOPs](t.png)" in section
    table = [line for line in section.splitlines() if line.startswith("| 1M")]
    assert table and "1.50" in table[0] and "1.70" in table[0] and "60 / 30 / 10" in table[0]
    unmeasured = replace(row, details={**row.details, "family": "skipping", "dynamic": True, "multi_exit": False})
    assert "Not measured yet" in render_model_card(unmeasured, {"curve": "c.png"})
    assert "trade-off" not in render_model_card(row, {"curve": "c.png"})  # static: no section at all


def test_a_layer_skipping_model_is_measured_against_its_static_anchor(tmp_path):
    """End to end: a gated ResNet-20 and its static ResNet-20 anchor, both trained briefly on
    digits; the export fits per-block thresholds, scores, times and writes the card."""
    run = _train(tmp_path / "runs", "digits_aig", "convnet_aig_resnet", depth=20, width=4)
    anchor = _train(tmp_path / "runs", "digits_r20", "resnet20", width=4)
    paths = _paths(tmp_path)
    row = export_run(ZooExport(run=run, tag="digits", paths=paths, data="digits", budgets=3, min_run_time=0.01,
                               anchor=anchor))
    trade_off = row.details["trade_off"]
    assert trade_off["kind"] == "gates" and trade_off["gated_blocks"] == 6
    trained, *calibrated = trade_off["curve"]
    assert trained["rate"] is None and [p["rate"] for p in calibrated] == pytest.approx([1.0, 0.65, 0.3])
    # the fitted rates hold on the calibration half (ties aside), so mean FLOPs fall with the rate
    assert calibrated[0]["budget_flops"] > calibrated[1]["budget_flops"] > calibrated[2]["budget_flops"]
    assert calibrated[2]["executed_fraction"] < calibrated[0]["executed_fraction"]
    for point in trade_off["curve"]:
        assert point["speedup_flops"] == pytest.approx(trade_off["static_flops"] / point["mean_flops"])
        assert point["speedup_measured_b1"] > 0 and point["speedup_measured_b256"] > 0
    assert trade_off["anchor"]["name"].endswith("digits_r20/best.pt") and 0 < trade_off["anchor"]["accuracy"] <= 1
    card = (paths.cards_dir / "convnet_aig_resnet_digits.md").read_text()
    section = card.split("## Accuracy-FLOPs trade-off")[1].split("## Limitations")[0]
    assert "static anchor" in section and "trained rule" in section and "vs static (pt)" in section
    assert "6.0 / 6" in section
    assert (paths.cards_dir / "convnet_aig_resnet_digits_accuracy_flops.png").is_file()


def test_the_gate_card_names_the_cheapest_point_that_meets_the_target(static_run, tmp_path):
    row = export_run(ZooExport(run=static_run, tag="digits", paths=_paths(tmp_path)))

    def point(rate, accuracy, flops):
        return {"rate": rate, "thresholds": None, "accuracy": accuracy, "mean_flops": flops,
                "speedup_flops": 10e6 / flops, "executed_fraction": flops / 10e6, "budget_flops": flops,
                "speedup_measured_b1": 1.0, "speedup_flops_b1": 10e6 / flops,
                "speedup_measured_b256": 0.9 * 10e6 / flops, "speedup_flops_b256": 10e6 / flops}

    trade_off = {"kind": "gates", "protocol": "Fitted", "calibration_samples": 10, "evaluation_samples": 10,
                 "gated_blocks": 8, "static_flops": 10e6, "static": {"accuracy": 0.90},
                 "anchor": {"name": "runs/r/best.pt", "accuracy": 0.92},
                 "curve": [point(None, 0.921, 9.9e6), point(0.7, 0.918, 6.9e6), point(0.5, 0.916, 5e6),
                           point(0.3, 0.90, 3e6)]}
    gated = replace(row, details={**row.details, "family": "skipping", "trade_off": trade_off})
    card = render_model_card(gated, {"curve": "c.png", "trade_off": "t.png"})
    # against the anchor (92.0%): 0.5 at 91.6% is within 0.5 point and the cheapest such; 0.3 is not
    assert "rate 0.50, 91.60% at 5M (2.00x fewer FLOPs; measured 1.80x at batch 256, 0.90" in card
    worse = {**trade_off, "curve": trade_off["curve"][:1] + trade_off["curve"][3:]}
    card = render_model_card(replace(row, details={**row.details, "family": "skipping", "trade_off": worse}),
                             {"curve": "c.png"})
    assert "No point is within 0.5 point" in card


def test_the_recipe_keeps_what_the_run_set_and_a_teachers_settings_only_with_a_teacher():
    from dynamicnets.pipelines.zoo import _recipe

    plain = {"epochs": 3, "lr": 0.1, "init_from": None, "model_args": {}, "teacher_checkpoint": None,
             "teacher_weight": 0.0, "teacher_temperature": 1.0, "name": "x"}
    assert _recipe(plain) == {"epochs": 3, "lr": 0.1}
    taught = {**plain, "teacher_checkpoint": "pretrained:vit_cifar:cifar10", "teacher_weight": 0.5,
              "model_args": {"keep_ratio": 0.7}}
    assert _recipe(taught) == {"model_args": {"keep_ratio": 0.7}, "epochs": 3, "lr": 0.1,
                               "teacher_checkpoint": "pretrained:vit_cifar:cifar10", "teacher_weight": 0.5,
                               "teacher_temperature": 1.0}
