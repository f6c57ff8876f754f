"""Zoo export of token-pruning transformers (DynamicViT, EViT): the trained keep ratio and
other keep ratios, scored by compact execution and timed against the static ViT."""
import math
from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops
from dynamicnets.inference.token_policy import TokenPolicy
from dynamicnets.pipelines.checkpoint_data import load_checkpoint_data
from dynamicnets.pipelines.early_exit import split_for_calibration
from dynamicnets.pipelines.model_card import render_model_card
from dynamicnets.pipelines.zoo import ZooExport, ZooPaths, export_run
from dynamicnets.pipelines.zoo_token_trade_off import measure_token_trade_off
from dynamicnets.training import TrainConfig, Trainer

TINY = {"img_size": 8, "patch_size": 2, "embed_dim": 16, "depth": 4, "num_heads": 2}
"""A ViT for digits' 1x8x8 images: 16 patches, pruned before blocks 1, 2 and 3."""


def tiny_run(root, name, model, **args):
    """A model trained briefly on digits (2 epochs of 4 steps); returns its run folder."""
    Trainer(TrainConfig(name=name, model=model, model_args=args, data="digits", val_size=0.2, epochs=2,
                        batch_size=64, lr=0.05, max_steps_per_epoch=4, threads=1, device="cpu", out_dir=str(root),
                        progress=False)).fit()
    return root / name


def kept_after_stages(patches, ratio, stages):
    """Patch tokens a keep-ratio policy leaves after the last stage."""
    for _ in range(stages):
        patches = math.ceil(round(patches * ratio, 9))
    return patches


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return tiny_run(root, "digits_dvit", "dynamic_vit_cifar", **TINY), tiny_run(root, "digits_vit", "vit_cifar", **TINY)


def test_a_dynamic_vit_gets_its_trained_ratio_and_lower_ratios_timed_against_the_static_vit(runs, tmp_path):
    run, anchor = runs
    paths = ZooPaths(weights_dir=tmp_path / "weights", cards_dir=tmp_path / "cards",
                     zoo_table=tmp_path / "results" / "model_zoo.json", repo_root=tmp_path.parent)
    row = export_run(ZooExport(run=run, tag="digits", paths=paths, data="digits", min_run_time=0.01, anchor=anchor,
                               keep_ratios=(0.9, 0.7, 0.5, 0.3)))
    trade_off = row.details["trade_off"]
    assert trade_off["kind"] == "tokens" and trade_off["stages"] == 3
    assert trade_off["trained_policy"] == {"keep_ratio": 0.7}
    curve = trade_off["curve"]
    # 0.7 is the trained ratio: it is the first point, not listed twice
    assert [p["keep_ratio"] for p in curve] == [None, 0.9, 0.5, 0.3]
    by_ratio = sorted(curve, key=lambda p: -(p["keep_ratio"] or 0.7))
    flops = [p["mean_flops"] for p in by_ratio]
    assert all(a > b for a, b in zip(flops, flops[1:]))
    for point in curve:
        assert point["tokens_kept"] == kept_after_stages(16, point["keep_ratio"] or 0.7, 3) / 16
        assert point["speedup_flops"] == pytest.approx(trade_off["static_flops"] / point["mean_flops"])
        assert point["speedup_measured_b1"] > 0 and point["speedup_measured_b256"] > 0
    # the anchor is the ViT without pruning: its FLOPs are the ones the speedups are taken against
    assert trade_off["anchor"]["flops"] == trade_off["static_flops"]
    assert trade_off["anchor"]["name"].endswith("digits_vit/best.pt") and 0 < trade_off["anchor"]["accuracy"] <= 1
    assert trade_off["static"]["flops"] > trade_off["static_flops"]  # keeping every token, the scorers still run
    assert row.flops == trade_off["static"]["flops"]  # the registry's FLOPs: nothing skipped, not the trained ratio

    model = create_model("dynamic_vit_cifar", pretrained="digits", pretrained_dir=paths.weights_dir).eval()
    validation = load_checkpoint_data(row.checkpoint_fields(), "dvit", "digits", "val").dataset
    evaluation = split_for_calibration(validation, row.data["seed"])[1]
    assert trade_off["evaluation_samples"] == len(evaluation) < 256  # so the batch-256 timing is every sample
    x = torch.stack([evaluation[i][0] for i in range(len(evaluation))])
    for point in curve:
        policy = None if point["keep_ratio"] is None else TokenPolicy(keep_ratio=point["keep_ratio"])
        with torch.inference_mode():
            out = model(x, policy=policy, execution="compact")
        assert point["mean_flops"] == pytest.approx(float(out.flops.double().mean()))
        assert point["speedup_flops_b256"] == pytest.approx(trade_off["static_flops"] / point["mean_flops"])
    # the reported cost is what runs: FlopCounterMode (with the CPU's fused attention counted) on the
    # compact path of the lowest ratio
    counted = counted_flops(lambda: model(x[:8], policy=TokenPolicy(keep_ratio=0.3), execution="compact"))
    assert counted / 8 == pytest.approx(curve[-1]["mean_flops"])

    card = (paths.cards_dir / "dynamic_vit_cifar_digits.md").read_text()
    section = card.split("## Accuracy-FLOPs trade-off")[1].split("## Limitations")[0]
    for expected in ("static anchor `", "trained ratio (0.7)", "keep_ratio 0.3", "tokens kept", "3 pruning stages",
                     "measured b256", "![accuracy vs. FLOPs]"):
        assert expected in section, expected
    assert (paths.cards_dir / "dynamic_vit_cifar_digits_accuracy_flops.png").is_file()


def test_without_an_anchor_evit_is_timed_against_itself_keeping_every_token():
    torch.manual_seed(0)
    model = create_model("evit_cifar", num_classes=3, in_chans=1, reorganize_in=(1, 2), **TINY).eval()
    validation = TensorDataset(torch.randn(40, 1, 8, 8), torch.randint(0, 3, (40,)))
    trade_off = measure_token_trade_off(model, validation, (1, 8, 8), min_run_time=0.01, keep_ratios=(0.5,))
    assert trade_off["kind"] == "tokens" and trade_off["anchor"] is None and trade_off["stages"] == 2
    assert trade_off["reference"] == "the model keeping every token"
    trained, low = trade_off["curve"]
    assert (trained["keep_ratio"], low["keep_ratio"]) == (None, 0.5)
    assert trained["mean_flops"] > low["mean_flops"] and trained["tokens_kept"] > low["tokens_kept"]
    assert trade_off["evaluation_samples"] == 20
    evaluation = split_for_calibration(validation, 0)[1]
    x = torch.stack([evaluation[i][0] for i in range(len(evaluation))])
    with torch.inference_mode():
        every = model(x, policy=TokenPolicy(keep_ratio=1.0), execution="compact").flops.double().mean()
        out = model(x, policy=TokenPolicy(keep_ratio=0.5), execution="compact")
    lowest = out.flops.double().mean()
    # EViT's fused token competes at the next stage (8 patches + it enter stage 2, ceil(4.5) stay): the
    # share of patches left is what the model reports
    assert low["tokens_kept"] == float(out.decisions["kept.1"].double().mean()) <= 5 / 16
    # against the model keeping every token, the timed FLOPs speedup is its cost over the point's
    assert low["speedup_flops_b256"] == pytest.approx(float(every / lowest))
    assert trade_off["static"]["flops"] == pytest.approx(float(every))


def test_models_without_a_token_policy_are_left_to_others_and_bad_ratios_are_refused():
    shape = (1, 8, 8)
    for name in ("vit_cifar", "avit_cifar"):  # static; halting takes a HaltingPolicy, not a TokenPolicy
        assert measure_token_trade_off(create_model(name, in_chans=1, **TINY), [], shape) is None
    assert measure_token_trade_off(create_model("resnet20", in_chans=1, width=4), [], shape) is None
    model = create_model("dynamic_vit_cifar", in_chans=1, **TINY)
    for ratios in ((0.5, 0.7), (1.0,), (0.0,), (0.5, 0.5), ("0.5",)):
        with pytest.raises(ConfigError, match="keep_ratios: expected keep ratios in"):
            measure_token_trade_off(model, [], shape, keep_ratios=ratios)


def test_the_token_verdict_names_the_cheapest_ratio_within_half_a_point(runs, tmp_path):
    run, _ = runs
    paths = ZooPaths(weights_dir=tmp_path / "weights", cards_dir=tmp_path / "cards",
                     zoo_table=tmp_path / "results" / "model_zoo.json", repo_root=tmp_path.parent)
    row = export_run(ZooExport(run=run, tag="digits", paths=paths))  # no data: nothing measured

    def point(ratio, accuracy, flops, kept):
        speedup = 10e6 / flops
        return {"keep_ratio": ratio, "accuracy": accuracy, "mean_flops": flops, "tokens_kept": kept,
                "speedup_flops": speedup, "speedup_measured_b1": 0.9, "speedup_flops_b1": speedup,
                "speedup_measured_b256": 0.9 * speedup, "speedup_flops_b256": speedup}

    trade_off = {"kind": "tokens", "protocol": "Trained ratio and others", "evaluation_samples": 10, "stages": 3,
                 "trained_policy": {"keep_ratio": 0.7}, "static_flops": 10e6,
                 "static": {"accuracy": 0.90, "flops": 10.2e6}, "reference": "the static anchor `v`",
                 "anchor": {"name": "runs/v/best.pt", "accuracy": 0.92, "flops": 10e6},
                 "curve": [point(None, 0.918, 6e6, 0.34), point(0.5, 0.916, 5e6, 0.13), point(0.3, 0.85, 4e6, 0.03)]}
    card = render_model_card(replace(row, details={**row.details, "trade_off": trade_off}), {"curve": "c.png"})
    assert "keep_ratio 0.5, 91.60% at 5M (2.00x fewer FLOPs; measured 1.80x at batch 256, 0.90" in card
    assert "| trained ratio (0.7) |         34.00 |" in card  # tokens kept, in %
    unmeasured = render_model_card(row, {"curve": "c.png"})
    assert "Not measured yet" in unmeasured and "token-pruning transformers" in unmeasured


def test_a_static_vit_registered_among_the_transformers_gets_no_trade_off_section(runs, tmp_path):
    paths = ZooPaths(weights_dir=tmp_path / "weights", cards_dir=tmp_path / "cards",
                     zoo_table=tmp_path / "results" / "model_zoo.json", repo_root=tmp_path)
    row = export_run(ZooExport(run=runs[1], tag="digits", paths=paths))
    assert row.details["family"] == "transformers" and row.details["dynamic"] is False
    card = (paths.cards_dir / "vit_cifar_digits.md").read_text()
    assert "trade-off" not in card and "nothing skipped" not in card
