"""DS-Net's sandwich gate sparsification (SGS) and the gate's input options."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops
from dynamicnets.outputs import DynamicOutput

SHAPE = (3, 16, 16)


def sgs_model(**kw):
    torch.manual_seed(0)
    return create_model("dsnet_resnet_cifar", num_classes=3, sgs_weight=2.0, **kw)


def output_with(per_width: list[torch.Tensor], scores: torch.Tensor) -> DynamicOutput:
    out = DynamicOutput(logits=per_width[-1], exit_logits=[*per_width, per_width[-1]])
    out.decisions["width_scores"] = scores
    return out


def one_hot_logits(classes: list[int]) -> torch.Tensor:
    return F.one_hot(torch.tensor(classes), 3).float() * 5


def test_easy_samples_target_the_narrowest_width_and_hard_ones_the_widest():
    model = sgs_model()
    target = torch.tensor([0, 1, 2, 0])
    # sample 0: narrowest right (easy); 1: narrowest wrong, widest wrong (hard);
    # 2: narrowest wrong, widest right (no target); 3: narrowest right, widest wrong (easy)
    narrow = one_hot_logits([0, 0, 0, 0])
    wide = one_hot_logits([1, 2, 2, 1])
    middle = torch.zeros(4, 3)
    scores = torch.randn(4, 4, requires_grad=True)
    loss = model.label_losses(output_with([narrow, middle, middle, wide], scores), target)["sandwich_gate"]
    ce = F.cross_entropy(scores, torch.tensor([0, 3, 0, 0]), reduction="none")
    expected = 2.0 * (ce[0] + ce[1] + ce[3]) / 4
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert scores.grad[2].abs().sum() == 0 and scores.grad[1].abs().sum() > 0


def test_sgs_trains_the_gate_and_its_stem_only_and_is_off_by_default_and_in_eval():
    model = sgs_model().train()
    x, y = torch.randn(6, *SHAPE), torch.arange(6) % 3
    out = model(x)
    assert out.decisions["width_scores"].shape == (6, 4)
    loss = model.label_losses(out, y)["sandwich_gate"]
    loss.backward()
    assert model.gate.weight.grad.abs().sum() > 0
    reached = {name for name, p in model.backbone.named_parameters() if p.grad is not None}
    assert reached and all(name.startswith("stem.") for name in reached)

    plain = create_model("dsnet_resnet_cifar", num_classes=3).train()
    assert plain.label_losses(plain(x), y) == {}
    with torch.no_grad():
        assert model.eval().label_losses(model(x), y) == {}


def test_a_pooled_grid_gate_on_the_full_stem_counts_its_flops():
    model = create_model("dsnet_resnet_cifar", num_classes=3, gate_width=1.0, gate_grid=4).eval()
    assert model.gate.in_features == 16 * 16
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        out = model(x)
    costs = model.width_costs(SHAPE)
    assert torch.equal(out.flops, model.gate_flops(SHAPE) + costs[out.decisions["width_index"]])
    assert int(out.flops.sum()) == counted_flops(model, x)
    narrow_gate = create_model("dsnet_resnet_cifar", num_classes=3)
    assert model.gate_flops(SHAPE) > narrow_gate.gate_flops(SHAPE)


def compact_equals_masked(model) -> tuple[torch.Tensor, object]:
    """Spread the gate, run a batch both ways, check they agree; returns `(x, compact output)`."""
    with torch.no_grad():
        model.gate.weight.normal_(0, 3.0)
        x = torch.randn(8, *SHAPE) + torch.linspace(-4, 4, 8).view(8, 1, 1, 1)
        compact, masked = model(x, "compact"), model(x, "masked")
    assert torch.equal(compact.decisions["width_index"], masked.decisions["width_index"])
    torch.testing.assert_close(compact.logits, masked.logits, atol=1e-5, rtol=1e-5)
    return x, compact


def test_grid_gate_compact_equals_masked_execution():
    compact_equals_masked(create_model("dsnet_resnet_cifar", num_classes=3, gate_grid=2).eval())


def test_bad_gate_options_raise_config_errors():
    with pytest.raises(ConfigError, match="gate_width"):
        create_model("dsnet_resnet_cifar", gate_width=0.3)
    with pytest.raises(ConfigError, match="gate_grid"):
        create_model("dsnet_resnet_cifar", gate_grid=0)
    with pytest.raises(ConfigError, match="sgs_weight"):
        create_model("dsnet_resnet_cifar", sgs_weight=-1.0)


def test_sgs_refuses_compact_training_outputs():
    model = sgs_model().train()
    x, y = torch.randn(4, *SHAPE), torch.arange(4) % 3
    out = model(x, "compact")
    assert out.decisions["width_scores"].shape == (4, 4)
    with pytest.raises(ConfigError, match="masked training execution"):
        model.label_losses(out, y)


@pytest.mark.parametrize("gate_stages, gate_width", [(1, None), (2, 0.5)])
def test_a_gate_after_stages_counts_what_it_runs_and_compact_equals_masked(gate_stages, gate_width):
    torch.manual_seed(0)
    model = create_model("dsnet_resnet_cifar", num_classes=3, gate_stages=gate_stages, gate_width=gate_width,
                         gate_grid=2).eval()
    channels = {1: 16, 2: 32}[gate_stages] * (gate_width or 0.25)
    assert model.gate.in_features == int(channels) * 4
    x, compact = compact_equals_masked(model)
    assert int(compact.flops.sum()) == counted_flops(model, x)
    stem_only = create_model("dsnet_resnet_cifar", num_classes=3, gate_width=gate_width, gate_grid=2)
    assert model.gate_flops(SHAPE) > stem_only.gate_flops(SHAPE)


def test_gate_stages_must_leave_a_stage_for_the_widths():
    with pytest.raises(ConfigError, match="gate_stages"):
        create_model("dsnet_resnet_cifar", gate_stages=3)
