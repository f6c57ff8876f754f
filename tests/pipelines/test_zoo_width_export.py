"""Zoo export of width-adaptive and dynamic-parameter models: measured against the static network."""
from dataclasses import replace

import pytest

from dynamicnets import ConfigError, create_model
from dynamicnets.inference import WidthPolicy
from dynamicnets.pipelines.model_card import render_model_card
from dynamicnets.pipelines.zoo import ZooExport, ZooPaths, export_run
from dynamicnets.training import TrainConfig, Trainer, load_checkpoint, save_checkpoint

def tiny_run(root, name, model, **args):
    """A model trained briefly on digits (2 epochs of 4 steps); returns its run folder."""
    Trainer(TrainConfig(name=name, model=model, model_args=args, data="digits", val_size=0.2, epochs=2,
                        batch_size=64, lr=0.05, max_steps_per_epoch=4, threads=1, device="cpu", out_dir=str(root),
                        progress=False)).fit()
    return root / name


def export(run, root, anchor=None):
    paths = ZooPaths(weights_dir=root / "weights", cards_dir=root / "cards",
                     zoo_table=root / "results" / "model_zoo.json", repo_root=root.parent)
    row = export_run(ZooExport(run=run, tag="digits", paths=paths, data="digits", min_run_time=0.01, anchor=anchor))
    card = (paths.cards_dir / f"{row.model}_digits.md").read_text()
    return row, card.split("## Accuracy-FLOPs trade-off")[1].split("## Limitations")[0], paths.cards_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def anchor(runs):
    return tiny_run(runs, "digits_r20", "resnet20", width=4)


@pytest.fixture(scope="module")
def slimmable(runs):
    return tiny_run(runs, "digits_slim", "slimmable_resnet_cifar", base_width=4, widths=(0.25, 0.5, 1.0))


def test_a_slimmable_network_gets_one_point_per_width_and_fitted_cascades_timed_against_its_anchor(
        slimmable, anchor, tmp_path):
    row, section, cards = export(slimmable, tmp_path, anchor)
    trade_off = row.details["trade_off"]
    assert trade_off["kind"] == "widths" and trade_off["method"] == "slimmable"
    singles = [p for p in trade_off["curve"] if "width" in p]
    cascades = [p for p in trade_off["curve"] if "cascade" in p]
    assert [p["width"] for p in singles] == [1.0, 0.5, 0.25]
    flops = [p["mean_flops"] for p in singles]
    assert flops[0] == trade_off["static_flops"] and flops[0] > flops[1] > flops[2]
    samples = trade_off["evaluation_samples"]
    for i, point in enumerate(singles):
        assert point["width_histogram"] == [samples if j == 2 - i else 0 for j in range(3)]
    for point in trade_off["curve"]:
        assert point["speedup_flops"] == pytest.approx(trade_off["static_flops"] / point["mean_flops"])
        assert point["speedup_measured_b1"] > 0 and point["speedup_measured_b256"] > 0
    # one cascade per budget ratio, its chain and thresholds fitted on the other half; a sample that
    # went on paid for every width it ran
    model = create_model("slimmable_resnet_cifar", num_classes=10, in_chans=1, base_width=4, widths=(0.25, 0.5, 1.0))
    width_flops = {w: model.flops(row.input_shape, w) for w in (0.25, 0.5, 1.0)}
    assert [p["budget_ratio"] for p in cascades] == [0.85, 0.7, 0.6, 0.5, 0.35]
    for point in cascades:
        chain = point["cascade"]
        assert chain == sorted(chain) and chain[-1] == 1.0 and len(point["thresholds"]) == len(chain) - 1
        ended = dict(zip((0.25, 0.5, 1.0), point["width_histogram"]))
        assert sum(ended.values()) == samples and all(ended[w] == 0 for w in ended if w not in chain)
        paid = [sum(width_flops[v] for v in chain[: i + 1]) for i in range(len(chain))]
        assert point["mean_flops"] == pytest.approx(sum(ended[w] * c for w, c in zip(chain, paid)) / samples)
        assert point["mean_flops"] <= 1.3 * point["budget_ratio"] * trade_off["static_flops"]
    # the anchor is the widest width's architecture: same FLOPs, scored on the same samples
    assert trade_off["anchor"]["flops"] == trade_off["static_flops"]
    assert trade_off["anchor"]["name"].endswith("/digits_r20/best.pt") and 0 < trade_off["anchor"]["accuracy"] <= 1
    assert singles[0]["accuracy"] == trade_off["static"]["accuracy"]
    assert "static anchor" in section and "| width 0.25" in section and "measured b256" in section
    assert "(budget 0.7x)" in section and "ended at" in section and "fit_width_cascade" in section
    assert "build_slice_cache" in trade_off["protocol"]
    assert (cards / "slimmable_resnet_cifar_digits_accuracy_flops.png").is_file()


def test_dsnet_budgets_and_caps_bound_every_samples_width_and_its_flops_include_the_gate(runs, tmp_path):
    run = tiny_run(runs, "digits_dsnet", "dsnet_resnet_cifar", base_width=4, widths=(0.25, 0.5, 1.0))
    row, section, _ = export(run, tmp_path)
    trade_off = row.details["trade_off"]
    assert trade_off["kind"] == "widths" and trade_off["method"] == "dsnet" and trade_off["anchor"] is None
    widths, curve = trade_off["widths"], trade_off["curve"]
    assert [p["max_width"] for p in curve] == [None] * 6 + [0.5, 0.25]
    assert [p["budget_ratio"] for p in curve] == [None, 0.85, 0.7, 0.6, 0.5, 0.35, None, None]
    model = create_model("dsnet_resnet_cifar", num_classes=10, in_chans=1, base_width=4, widths=widths)
    costs = model.width_costs(row.input_shape).tolist()
    assert trade_off["gate_flops"] == model.gate_flops(row.input_shape) > 0
    assert trade_off["static_flops"] == costs[-1]
    for point in curve:
        histogram = point["width_histogram"]
        assert sum(histogram) == trade_off["evaluation_samples"]
        cap = point["max_width"] or 1.0
        assert all(n == 0 for w, n in zip(widths, histogram) if w > cap)
        executed = trade_off["gate_flops"] + sum(n * c for n, c in zip(histogram, costs)) / sum(histogram)
        assert point["mean_flops"] == pytest.approx(executed)
        assert point["speedup_flops"] == pytest.approx(trade_off["static_flops"] / point["mean_flops"])
        assert point["speedup_measured_b1"] > 0 and point["speedup_measured_b256"] > 0
    # a lower cap, or a smaller budget, never makes a sample wider
    for rows in ([curve[0], *curve[6:]], curve[1:6]):
        assert [p["mean_flops"] for p in rows] == sorted((p["mean_flops"] for p in rows), reverse=True)
    assert curve[-1]["width_histogram"][0] == trade_off["evaluation_samples"]
    # each budget was fitted on the calibration half (within budget there, exactly) and the fit is
    # stored; the evaluation half spends about as much
    for point in curve[1:6]:
        budget = point["budget_ratio"] * trade_off["static_flops"]
        policy = WidthPolicy.from_dict(point["policy"])
        assert policy.meta["budget_flops"] == budget and policy.meta["mean_flops"] <= budget
        assert len(policy.bias) == len(widths)
        assert point["mean_flops"] <= 1.25 * budget
    assert "trained rule" in section and "<= 0.25" in section and "widths run" in section
    assert "budget 0.7x" in section and "calibrate_width_policy" in section
    assert "the widest width" in section


def test_a_dynamic_parameter_model_is_compared_with_its_anchor_and_unmeasured_without(runs, anchor, tmp_path):
    run = tiny_run(runs, "digits_dyrelu", "resnet20_dyrelu", width=4)
    row, section, cards = export(run, tmp_path / "with", anchor)
    trade_off = row.details["trade_off"]
    assert trade_off["kind"] == "anchor" and 0 < trade_off["anchor"]["accuracy"] <= 1
    assert 0 < trade_off["model"]["accuracy"] <= 1
    # DY-ReLU's hyper functions cost FLOPs on top of the same ResNet-20
    assert trade_off["model"]["flops"] > trade_off["anchor"]["flops"]
    assert trade_off["speedup_flops"] == pytest.approx(trade_off["anchor"]["flops"] / trade_off["model"]["flops"])
    assert trade_off["speedup_measured_b1"] > 0 and trade_off["speedup_measured_b256"] > 0
    assert "static anchor `" in section and "speed b256" in section and "points of accuracy" in section
    assert not (cards / "resnet20_dyrelu_digits_accuracy_flops.png").exists()  # no curve, no plot

    row, section, _ = export(run, tmp_path / "without")
    assert "trade_off" not in row.details and "Not measured yet" in section and "--anchor RUN" in section


def test_an_anchor_for_other_inputs_is_refused(slimmable, anchor, tmp_path):
    other = tmp_path / "other_anchor"
    other.mkdir()
    ckpt = load_checkpoint(anchor / "best.pt")
    ckpt["input_shape"] = [1, 16, 16]
    save_checkpoint(other / "best.pt", ckpt)
    (other / "metrics.jsonl").write_text((anchor / "metrics.jsonl").read_text())
    with pytest.raises(ConfigError, match=r"--anchor .*\(1, 16, 16\).*expects \(1, 8, 8\)"):
        export(slimmable, tmp_path, other)


def test_the_width_verdict_says_whether_batch_256_realises_the_flops_speedup(anchor, tmp_path):
    paths = ZooPaths(weights_dir=tmp_path / "weights", cards_dir=tmp_path / "cards",
                     zoo_table=tmp_path / "model_zoo.json", repo_root=tmp_path)
    row = export_run(ZooExport(run=anchor, tag="digits", paths=paths))  # a static row to dress as a slimmable one

    def point(width, accuracy, realised):
        speedup = 1 / width ** 2
        return {"width": width, "accuracy": accuracy, "mean_flops": 1e6 * width ** 2, "speedup_flops": speedup,
                "width_histogram": [0, 0], "speedup_measured_b1": 1.0, "speedup_flops_b1": speedup,
                "speedup_measured_b256": realised * speedup, "speedup_flops_b256": speedup}

    def card(realised):
        trade_off = {"kind": "widths", "method": "slimmable", "protocol": "Every width", "evaluation_samples": 10,
                     "widths": [0.5, 1.0], "static_flops": 1e6, "gate_flops": 0.0, "static": {"accuracy": 0.9},
                     "anchor": None, "curve": [point(1.0, 0.9, 1.0), point(0.5, 0.897, realised)]}
        dressed = replace(row, details={**row.details, "family": "width", "trade_off": trade_off})
        return render_model_card(dressed, {"curve": "c.png"})

    assert "width 0.5, 89.70% at 250K (4.00x fewer FLOPs; measured 3.60x at batch 256, 0.90 of its FLOPs " \
           "speedup: meets the 0.85 target" in card(0.9)
    assert "0.50 of its FLOPs speedup: misses the 0.85 target" in card(0.5)
