"""`dynamicnets export` of the shipped token-pruning transformers: one graph per keep ratio,
the ratio in the manifest, the folder checked against eager compact inference."""
from __future__ import annotations

import json

import pytest
import torch

from dynamicnets.cli.main import main
from dynamicnets.deploy import DeployedModel
from dynamicnets.inference.token_policy import TokenPolicy
from dynamicnets.models import create_model
from dynamicnets.profiling.report import format_flops


@pytest.mark.slow  # a full-size ViT through torch.export; the budget test below covers the CLI path
def test_the_shipped_dynamic_vit_exports_at_the_keep_ratio_asked_for(tmp_path, capsys):
    out = tmp_path / "dvit"
    assert main(["export", "--model", "dynamic_vit_cifar", "--pretrained", "cifar10", "--keep-ratio", "0.5",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kind: static" in printed and "check_decisions_equal: True" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["policy"] == {"kind": "token_keep_ratio", "keep_ratio": 0.5, "min_tokens": 1}
    policy_line = next(line for line in printed.splitlines() if line.strip().startswith("policy:"))
    assert "'token_keep_ratio'" in policy_line and "'keep_ratio': 0.5" in policy_line  # what was shipped, its cost:
    assert f"flops_per_sample: {format_flops(manifest['graphs']['model']['flops'])}" in printed
    model = create_model("dynamic_vit_cifar", pretrained="cifar10").eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x, policy=TokenPolicy(keep_ratio=0.5))
    deployed = DeployedModel.load(out)(x)
    assert torch.equal(deployed.decisions["tokens"], ref.decisions["tokens"])  # 64 -> 32 -> 16 -> 8 patches
    assert deployed.decisions["tokens"].tolist() == [8] * 4
    torch.testing.assert_close(deployed.logits, ref.logits, rtol=1e-4, atol=1e-4)


def test_keep_ratios_go_to_token_models_only_and_thresholds_do_not(tmp_path, capsys):
    assert main(["export", "--model", "resnet20", "--pretrained", "cifar10", "--keep-ratio", "0.5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--keep-ratio: model 'resnet20' prunes no tokens" in capsys.readouterr().err
    assert main(["export", "--model", "dynamic_vit_cifar", "--pretrained", "cifar10", "--thresholds", "0.5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "choose it with --keep-ratio" in capsys.readouterr().err
    assert main(["export", "--model", "dynamic_vit_cifar", "--pretrained", "cifar10", "--keep-ratio", "0.5,0.5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "keep_ratio has 2 entries" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_budget_fits_a_keep_ratio_in_eval_and_export(tmp_path, capsys):
    from dynamicnets.pipelines.evaluate import EvalRequest, evaluate_checkpoint
    from dynamicnets.pipelines.early_exit import EarlyExitRequest
    from dynamicnets.training import TrainConfig, Trainer

    tiny = {"img_size": 8, "patch_size": 2, "embed_dim": 16, "depth": 4, "num_heads": 2}
    Trainer(TrainConfig(name="dvit", model="dynamic_vit_cifar", model_args=tiny, data="digits",
                        val_size=0.2, epochs=1, batch_size=64, lr=0.05, max_steps_per_epoch=3, threads=1,
                        device="cpu", out_dir=str(tmp_path), progress=False)).fit()
    ckpt = tmp_path / "dvit" / "last.pt"
    model = create_model("dynamic_vit_cifar", **tiny, in_chans=1)
    full = model.full_flops((1, 8, 8))
    found = evaluate_checkpoint(EvalRequest(checkpoint=str(ckpt), early_exit=EarlyExitRequest(budget_fraction=0.6),
                                            timed_samples=8, min_run_time=0.01))
    ratio = found["token_policy"]["keep_ratio"]
    assert found["mean_flops"] <= 0.6 * full * 1.0001 and 0 < ratio < 1
    # the largest ratio within the budget: a little more would exceed it
    one = torch.zeros(1, 1, 8, 8)
    with torch.no_grad():
        over = model.eval()(one, policy=TokenPolicy(keep_ratio=min(1.0, ratio + 1 / 16))).flops[0]  # 16 patches
    assert float(over) > 0.6 * full
    out = tmp_path / "deployed"
    assert main(["export", "--checkpoint", str(ckpt), "--budget", "60%", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "keep ratio" in printed and "check_decisions_equal: True" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["policy"]["keep_ratio"] == ratio and manifest["metadata"]["fitted"]["fitted_mean_flops"] <= (
        0.6 * full * 1.0001)
    assert main(["export", "--checkpoint", str(ckpt), "--budget", "60%", "--keep-ratio", "0.5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--budget and --keep-ratio: give one" in capsys.readouterr().err
