"""Zoo export of spatially gated models (DynConv): the trained rule and density caps,
timed against the static anchor with the fastest strategy per gated block."""
from dataclasses import replace

import pytest
import torch

from dynamicnets import ConfigError, create_model
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.pipelines.checkpoint_data import load_checkpoint_data
from dynamicnets.pipelines.early_exit import split_for_calibration
from dynamicnets.pipelines.model_card import render_model_card
from dynamicnets.pipelines.zoo import ZooExport, ZooPaths, export_run
from dynamicnets.pipelines.zoo_spatial_trade_off import measure_spatial_trade_off
from dynamicnets.profiling.allocator import keep_freed_memory
from dynamicnets.training import TrainConfig, Trainer

STRATEGIES = {"dense", "positions", "tiles"}


def tiny_run(root, name, model, **args):
    """A model trained briefly on digits (2 epochs of 4 steps); returns its run folder."""
    Trainer(TrainConfig(name=name, model=model, model_args=args, data="digits", val_size=0.2, epochs=2,
                        batch_size=64, lr=0.05, max_steps_per_epoch=4, threads=1, device="cpu", out_dir=str(root),
                        progress=False)).fit()
    return root / name


def paths_in(root):
    return ZooPaths(weights_dir=root / "weights", cards_dir=root / "cards",
                    zoo_table=root / "results" / "model_zoo.json", repo_root=root.parent)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return tiny_run(root, "digits_dynconv", "dynconv_resnet20", width=4), tiny_run(root, "digits_r20", "resnet20",
                                                                                    width=4)


def test_a_dynconv_model_gets_its_trained_rule_and_a_density_cap_timed_against_its_anchor(runs, tmp_path):
    run, anchor = runs
    paths = paths_in(tmp_path)
    row = export_run(ZooExport(run=run, tag="digits", paths=paths, data="digits", min_run_time=0.01, anchor=anchor,
                               density_caps=(0.5,)))
    trade_off = row.details["trade_off"]
    assert trade_off["kind"] == "spatial" and trade_off["gated_blocks"] == 7  # 9 blocks, 2 change shape
    assert trade_off["allocator"] == keep_freed_memory()  # the timing ran with the steady allocator
    trained, capped = trade_off["curve"]
    assert trained["max_density"] is None and capped["max_density"] == 0.5
    # the gates start open and 8 steps leave them so: the cap is what brings the cost down
    assert trained["density"] > 0.5 >= capped["density"] and capped["mean_flops"] < trained["mean_flops"]
    # the anchor is the architecture without gates: its FLOPs are the dense FLOPs speedups are taken against
    assert trade_off["anchor"]["flops"] == trade_off["static_flops"]
    assert trade_off["anchor"]["name"].endswith("digits_r20/best.pt") and 0 < trade_off["anchor"]["accuracy"] <= 1
    assert trade_off["static"]["flops"] > trade_off["static_flops"]  # run densely, the model still pays its gates

    model = create_model("dynconv_resnet20", pretrained="digits", pretrained_dir=paths.weights_dir).eval()
    validation = load_checkpoint_data(row.checkpoint_fields(), "dynconv", "digits", "val").dataset
    evaluation = split_for_calibration(validation, row.data["seed"])[1]
    x = torch.stack([evaluation[i][0] for i in range(len(evaluation))])
    for point in trade_off["curve"]:
        assert point["speedup_flops"] == pytest.approx(trade_off["static_flops"] / point["mean_flops"])
        assert point["speedup_measured_b1"] > 0 and point["speedup_measured_b256"] > 0
        for size in (1, 256):
            assert len(point[f"strategies_b{size}"]) == 7 and set(point[f"strategies_b{size}"]) <= STRATEGIES
        # the timed FLOPs are those of the chosen strategies on exactly the timed samples (one batch here)
        policy = None if point["max_density"] is None else GatePolicy.constant(0.0, 7, max_density=0.5)
        with torch.inference_mode():
            flops = model(x, policy=policy, strategy=point["strategies_b256"]).flops.double().mean()
        assert point["speedup_flops_b256"] == pytest.approx(trade_off["static_flops"] / float(flops))
    card = (paths.cards_dir / "dynconv_resnet20_digits.md").read_text()
    section = card.split("## Accuracy-FLOPs trade-off")[1].split("## Limitations")[0]
    for expected in ("static anchor `", "trained rule", "max_density 0.5", "strategies b256", "7 gated blocks",
                     "every position run densely"):
        assert expected in section, expected
    assert (paths.cards_dir / "dynconv_resnet20_digits_accuracy_flops.png").is_file()
    # the shipped model runs the trained rule's fastest strategies at batch 256 by default; the card says so
    fastest = trained["strategies_b256"]
    assert row.model_args["strategy"] == fastest and trade_off["default_strategy"] == fastest
    assert [s.value for s in model.strategies] == fastest
    assert "re-tune with `dynamicnets.inference.fastest_block_strategies" in section
    # the FLOPs columns were counted before that choice: the card says whose strategy they count
    assert "dense FLOPs over the mean (the run's own strategy, not the default below)" in section
    assert "the shipped model's `out.flops` are higher wherever one does" in section
    assert [s.value for s in create_model("dynconv_resnet20", pretrained="digits", pretrained_dir=paths.weights_dir,
                                          strategy="tiles").strategies] == ["tiles"] * 7  # the caller's choice wins


def test_other_models_are_left_to_other_measurements_and_bad_caps_are_refused(runs):
    assert measure_spatial_trade_off(create_model("resnet20", in_chans=1, width=4), [], (1, 8, 8)) is None
    model = create_model("dynconv_resnet20", in_chans=1, width=4)
    for caps in ((0.5, 0.75), (1.0,), (0.0,)):
        with pytest.raises(ConfigError, match="caps: expected max_density caps in"):
            measure_spatial_trade_off(model, [], (1, 8, 8), caps=caps)


def test_the_spatial_verdict_names_the_cheapest_cap_within_half_a_point(runs, tmp_path):
    run, _ = runs
    row = export_run(ZooExport(run=run, tag="digits", paths=paths_in(tmp_path)))  # no data: nothing measured

    def point(cap, accuracy, flops, realised):
        speedup = 10e6 / flops
        return {"max_density": cap, "accuracy": accuracy, "mean_flops": flops, "density": flops / 10e6,
                "speedup_flops": speedup, "strategies_b1": ["dense"] * 2, "speedup_measured_b1": 0.9,
                "speedup_flops_b1": 1.0, "strategies_b256": ["positions", "tiles"],
                "speedup_measured_b256": realised * speedup, "speedup_flops_b256": speedup}

    trade_off = {"kind": "spatial", "protocol": "Trained rule and caps", "calibration_samples": 10,
                 "evaluation_samples": 10, "gated_blocks": 2, "static_flops": 10e6,
                 "static": {"accuracy": 0.90, "flops": 10.1e6}, "reference": "the static anchor `r`",
                 "anchor": {"name": "runs/r/best.pt", "accuracy": 0.92, "flops": 10e6},
                 "curve": [point(None, 0.921, 9.5e6, 1.0), point(0.5, 0.917, 6e6, 0.9), point(0.3, 0.90, 4e6, 0.9)]}
    card = render_model_card(replace(row, details={**row.details, "trade_off": trade_off}), {"curve": "c.png"})
    assert "max_density 0.5, 91.70% at 6M (1.67x fewer FLOPs; measured 1.50x at batch 256, 0.90" in card
    assert "| pt " in card and "| dd " in card  # strategies, one letter per gated block
    assert "Not measured yet" not in card
    unmeasured = render_model_card(row, {"curve": "c.png"})
    assert "Not measured yet" in unmeasured and "spatially gated ResNets" in unmeasured
