"""DS-Net: grouped inference equals per-sample and fused execution; costs; cost loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.models.width import DSNet
from dynamicnets.flops import counted_flops

SHAPE = (3, 16, 16)


def dsnet(**kw) -> DSNet:
    torch.manual_seed(0)
    model = create_model("dsnet_resnet_cifar", num_classes=5, **kw)
    with torch.no_grad():  # spread the gate's choices over the widths
        model.gate.weight.normal_(0, 3.0)
    return model


def spread_input(model: DSNet, batch: int = 8) -> torch.Tensor:
    """A batch whose samples the gate sends to at least two different widths."""
    offsets = torch.linspace(-4, 4, batch).view(batch, 1, 1, 1)
    for seed in range(50):
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(seed)) + offsets
        if model.gate_logits(x).argmax(-1).unique().numel() >= 2:
            return x
    raise AssertionError("no batch spread over two widths")


def test_grouped_execution_equals_per_sample_execution():
    model = dsnet().eval()
    x = spread_input(model)
    with torch.no_grad():
        out = model(x)
        for b in range(x.shape[0]):
            alone = model.backbone.forward_logits(x[b : b + 1], float(out.decisions["width"][b]))
            torch.testing.assert_close(out.logits[b : b + 1], alone, atol=1e-5, rtol=1e-5)


def test_grouped_execution_equals_fused_static_shape_execution():
    model = dsnet().eval()
    x = spread_input(model)
    with torch.no_grad():
        choice = model.gate_logits(x).argmax(-1)
        one_hot = F.one_hot(choice, len(model.widths))
        fused, per_width = model.run_fused(x, one_hot)
        torch.testing.assert_close(model.run_grouped(x, choice), fused, atol=1e-5, rtol=1e-5)
    assert len(per_width) == 4


def test_per_sample_flops_equal_flop_counter():
    model = dsnet().eval()
    x = spread_input(model)
    out = model(x)
    costs = model.width_costs(SHAPE)
    expected = model.gate_flops(SHAPE) + costs[out.decisions["width_index"]]
    assert torch.equal(out.flops, expected)
    assert out.flops.unique().numel() >= 2  # samples really cost different amounts
    assert int(out.flops.sum()) == counted_flops(model, x)


def test_training_mixes_widths_and_the_cost_loss_trains_the_gate():
    model = dsnet(cost_weight=1.0, target_flops_ratio=0.1).train()
    x = torch.randn(4, *SHAPE)
    out = model(x)
    assert len(out.exit_logits) == 5 and out.exit_logits[-1] is out.logits
    one_hot = F.one_hot(out.decisions["width_index"], 4).float()
    torch.testing.assert_close(
        out.logits, torch.einsum("bw,wbc->bc", one_hot, torch.stack(out.exit_logits[:4]))
    )
    assert out.flops[0].item() == model.gate_flops(SHAPE) + model.width_costs(SHAPE).sum().item()
    out.aux_losses["target_flops"].backward()
    assert model.gate.weight.grad.abs().sum() > 0


def test_task_loss_reaches_the_gate_through_the_straight_through_mix():
    model = dsnet(cost_weight=0.0).train()
    out = model(torch.randn(4, *SHAPE))
    assert "target_flops" not in out.aux_losses
    F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])).backward()
    assert model.gate.weight.grad.abs().sum() > 0


def test_bad_arguments_raise_config_errors():
    with pytest.raises(ConfigError, match="target_flops_ratio"):
        create_model("dsnet_resnet_cifar", target_flops_ratio=1.5)
    with pytest.raises(ConfigError, match="depth"):
        create_model("dsnet_resnet_cifar", depth=7)
