"""`dynamicnets export` of the shipped token-pruning transformers: one graph per keep ratio,
the ratio in the manifest, the folder checked against eager compact inference."""
from __future__ import annotations

import json

import torch

from dynamicnets.cli.main import main
from dynamicnets.deploy import DeployedModel
from dynamicnets.inference.token_policy import TokenPolicy
from dynamicnets.models import create_model


def test_the_shipped_dynamic_vit_exports_at_the_keep_ratio_asked_for(tmp_path, capsys):
    out = tmp_path / "dvit"
    assert main(["export", "--model", "dynamic_vit_cifar", "--pretrained", "cifar10", "--keep-ratio", "0.5",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kind: static" in printed and "check_decisions_equal: True" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["policy"] == {"kind": "token_keep_ratio", "keep_ratio": 0.5, "min_tokens": 1}
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
