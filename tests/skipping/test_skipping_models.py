"""Layer-skipping models: compact == masked, honest per-sample FLOPs, gradients, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skipping_helpers import GATED, HALTING, NUM_CLASSES, build, center_decisions, inputs

from dynamicnets import DynamicOutput, create_model, list_models
from dynamicnets.errors import ConfigError
from dynamicnets.flops import counted_flops

ALL = list(GATED) + list(HALTING)


def test_every_method_is_registered():
    assert {"skipnet_resnet", "convnet_aig_resnet", "blockdrop_resnet", "act_resnet",
            "sact_resnet"} <= set(list_models())


def forced_gates(case: str, batch: int, num_gated: int) -> torch.Tensor:
    if case == "all_off":
        return torch.zeros(batch, num_gated)
    if case == "all_on":
        return torch.ones(batch, num_gated)
    g = torch.Generator().manual_seed(1)
    return (torch.rand(batch, num_gated, generator=g) < 0.5).float()


@pytest.mark.parametrize("case,batch", [("mixed", 6), ("all_off", 3), ("all_on", 3), ("mixed", 1)])
@pytest.mark.parametrize("config", list(GATED))
def test_compact_equals_masked_for_given_hard_decisions(config, case, batch):
    model = build(config).eval()
    x = inputs(batch)
    gates = forced_gates(case, batch, model.num_gated_blocks)
    with torch.no_grad():
        compact = model(x, gates=gates)
        masked = model(x, gates=gates, execution="masked")
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(compact.decisions["gates"], gates)
    # FLOPs of what ran: compact skips blocks, masked runs every block
    assert int(compact.flops.sum()) == counted_flops(lambda: model(x, gates=gates))
    assert int(masked.flops.sum()) == counted_flops(lambda: model(x, gates=gates, execution="masked"))
    assert torch.equal(masked.decisions["compact_flops"], compact.flops)
    fixed, costs = model.block_costs(tuple(x.shape[1:]))
    torch.testing.assert_close(compact.flops, fixed + gates.double() @ costs)


@pytest.mark.parametrize("config", ALL)
def test_own_decisions_compact_equals_masked_and_flops_match_the_counter(config):
    model = build(config, depth=20)
    x = inputs(8)
    center_decisions(model, x, gain=5.0 if config in HALTING else 1.0)
    with torch.no_grad():
        compact = model(x)  # eval mode: compact
        masked = model(x, execution="masked")
    gates = compact.decisions["gates"]
    assert gates.shape == (8, model.num_gated_blocks)
    assert 0 < gates.mean() < 1 and gates.unique(dim=0).shape[0] > 1  # decisions really differ
    assert torch.equal(masked.decisions["gates"], gates)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-5)
    assert int(compact.flops.sum()) == counted_flops(model, x)
    assert compact.flops.dtype == torch.float64 and compact.flops.shape == (8,)
    assert (compact.flops < masked.flops).any() and (compact.flops <= masked.flops).all()
    torch.testing.assert_close(compact.decisions["executed_fraction"], gates.mean(dim=1))
    torch.testing.assert_close(compact.decisions["compact_flops"], compact.flops)
    for b in (0, 5):  # a sample alone gets the same decisions and logits as in the batch
        with torch.no_grad():
            alone = model(x[b : b + 1])
        assert torch.equal(alone.decisions["gates"], gates[b : b + 1])
        torch.testing.assert_close(alone.logits, compact.logits[b : b + 1], rtol=1e-4, atol=1e-5)
        assert alone.flops.item() == compact.flops[b].item()


@pytest.mark.parametrize("config", ALL)
def test_every_parameter_gets_a_finite_gradient_in_training(config):
    model = build(config).train()
    x = inputs(3)
    out = model(x)
    assert isinstance(out, DynamicOutput) and out.logits.shape == (3, NUM_CLASSES)
    loss = F.cross_entropy(out.logits, torch.tensor([0, 2, 4])) + out.aux_loss()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{config}: {name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{config}: {name} has a non-finite gradient"
    # masked training runs every block for every sample, and says so
    full = model.eval().block_costs(tuple(x.shape[1:])) if hasattr(model, "block_costs") else None
    if full is not None:
        assert (out.flops >= full[0] + full[1].sum()).all()


@pytest.mark.parametrize("config", ["skipnet_rl", "blockdrop", "convnet_aig"])
def test_training_forward_changes_no_module_state(config):
    model = build(config).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "backbone" not in k}
    model(inputs(4))
    after = model.state_dict()
    for key, value in before.items():
        if "running_" not in key and "num_batches" not in key:  # BatchNorm statistics may move
            assert torch.equal(after[key], value), key


def test_soft_gates_train_masked_and_cannot_run_compact():
    model = build("skipnet_ff").train()
    out = model(inputs(2))
    gates = out.decisions["gates"]
    assert ((gates > 0) & (gates < 1)).all()  # supervised pre-training: sigmoid gates
    with pytest.raises(ConfigError, match="hard gates"):
        model(inputs(2), execution="compact")


def test_rl_gates_are_hard_samples_and_rl_is_a_forward_switch():
    model = build("skipnet_ff").train()
    g = torch.Generator().manual_seed(0)
    out = model(inputs(4), rl=True, generator=g)
    assert set(out.decisions["gates"].unique().tolist()) <= {0.0, 1.0}
    assert "reinforce" in out.aux_losses
    assert out.aux_losses["reinforce"].item() == 0  # gradient only: the logged loss is the task's
    assert "reinforce" not in model(inputs(4)).aux_losses


def test_bad_arguments_raise_config_errors():
    with pytest.raises(ConfigError, match="6n \\+ 2"):
        create_model("skipnet_resnet", depth=8)
    with pytest.raises(ConfigError, match="6n \\+ 2"):
        create_model("act_resnet", depth=15)
    with pytest.raises(ConfigError, match="gate"):
        create_model("skipnet_resnet", depth=14, gate="lstm")
    with pytest.raises(ConfigError, match="target_rate"):
        create_model("convnet_aig_resnet", depth=14, target_rate=[0.5, 0.5])
    with pytest.raises(ConfigError, match="decide_last"):
        create_model("blockdrop_resnet", depth=14, decide_last=7)
    model = build("blockdrop").eval()
    with pytest.raises(ConfigError, match="shape"):
        model(inputs(2), gates=torch.ones(2, 5))
    with pytest.raises(ConfigError, match="execution"):
        model(inputs(2), execution="sparse")
    with pytest.raises(ConfigError, match="in_chans"):
        model(torch.randn(2, 1, 16, 16))


def test_gated_block_counts():
    model = build("convnet_aig", depth=110)
    assert model.num_gated_blocks == 51  # 54 blocks, the first of each stage always runs
    fixed, costs = model.block_costs((3, 32, 32))
    assert fixed + costs.sum().item() == create_model("resnet110", num_classes=NUM_CLASSES).flops(
        (3, 32, 32))


def test_convnet_aig_noise_schedule_ends_training_on_the_inference_rule():
    """`gate_noise_end=0`: at the end of training (`progress=1`) the training decisions
    are the eval rule's (logit > 0); at the start they are Gumbel samples that differ."""
    torch.manual_seed(0)
    model = create_model("convnet_aig_resnet", depth=14, width=4, gate_bias_init=0.0, gate_noise_end=0.0)
    assert model.uses_training_progress
    assert not create_model("convnet_aig_resnet", depth=14, width=4).uses_training_progress
    x = inputs(32)
    with torch.no_grad():
        rule = model.eval()(x, execution="masked").decisions["gates"]
        model.train()
        for module in model.modules():  # the same features as in eval: only the gates train
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        end = model(x, progress=1.0, generator=torch.Generator().manual_seed(0)).decisions["gates"]
        start = model(x, progress=0.0, generator=torch.Generator().manual_seed(0)).decisions["gates"]
    assert torch.equal(end, rule)
    assert not torch.equal(start, rule)
    with pytest.raises(ConfigError, match="gate_noise_end"):
        create_model("convnet_aig_resnet", depth=14, gate_noise_end=1.5)
