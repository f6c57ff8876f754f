"""SACT CIFAR ResNets: per-position halting, sparse inference equal to the masked reference,
honest FLOPs, ponder cost and its gradient, argument checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.models import registered_model
from dynamicnets.models.spatial.sact import SACTResNet

SHAPE = (3, 16, 16)
POLICIES = {"default": None, "mixed": GatePolicy((0.6, 0.8, 0.7))}


def halting_model(**kwargs) -> SACTResNet:
    """A small float64 SACT ResNet-20 with trained-looking BN statistics and halting units
    whose scores spread, so positions halt after different blocks."""
    torch.manual_seed(0)
    model = create_model("sact_resnet20", width=8, num_classes=5, dtype=torch.float64, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for t, lo, hi in ((module.running_mean, -0.2, 0.2), (module.running_var, 0.5, 2.0),
                                  (module.weight, 0.5, 1.5), (module.bias, -0.1, 0.1)):
                    t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo)
        for units in model.halting:
            for unit in units:
                unit.conv.weight.copy_(0.2 * torch.randn(unit.conv.weight.shape, generator=g, dtype=torch.float64))
                unit.fc.weight.copy_(0.1 * torch.randn(unit.fc.weight.shape, generator=g, dtype=torch.float64))
                unit.fc.bias.fill_(0.3)
    return model.eval()


def inputs(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *SHAPE, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("policy", list(POLICIES), ids=list(POLICIES))
@pytest.mark.parametrize("batch", [1, 3])
def test_compact_equals_masked(batch, policy):
    model, x = halting_model(), inputs(batch)
    kwargs = {"policy": POLICIES[policy]}
    with torch.no_grad():
        compact = model(x, **kwargs)
        masked = model(x, execution="masked", **kwargs)
    compact_grad_on = model(x, **kwargs)  # not in place: the same result
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(compact_grad_on.logits.detach(), compact.logits, rtol=1e-10, atol=1e-10)
    assert compact.decisions.keys() == masked.decisions.keys()
    for key, value in compact.decisions.items():
        torch.testing.assert_close(value, masked.decisions[key], rtol=1e-10, atol=1e-10, msg=key)
    # the decisions are not trivial: positions halt after different blocks
    counts = torch.cat([compact.decisions[f"ponder_map.{s}"].floor().flatten() for s in range(3)])
    assert len(set(counts.tolist())) >= 2
    assert (compact.decisions["density"] < 1).all()
    torch.testing.assert_close(compact.flops, masked.decisions["compact_flops"])
    assert (compact.flops < masked.flops).all()


@pytest.mark.parametrize("policy", list(POLICIES), ids=list(POLICIES))
def test_flops_equal_the_flop_counter(policy):
    model, x = halting_model(), inputs(3)
    kwargs = {"policy": POLICIES[policy]}
    with torch.no_grad():
        compact = model(x, **kwargs)
        masked = model(x, execution="masked", **kwargs)
    assert int(compact.flops.sum()) == counted_flops(lambda: model(x, **kwargs))
    assert int(masked.flops.sum()) == counted_flops(lambda: model(x, execution="masked", **kwargs))
    assert (masked.flops == model.flops(SHAPE)).all()
    for i in range(3):  # per sample: each alone costs what the batch reported for it
        one = x[i : i + 1]
        assert counted_flops(lambda: model(one, **kwargs)) == int(compact.flops[i])


def test_ponder_maps():
    model, x = halting_model(), inputs(3)
    with torch.no_grad():
        out = model(x)
    sizes = (16, 8, 4)
    total = 0
    for s, blocks in enumerate(model.stages):
        ponder = out.decisions[f"ponder_map.{s}"]
        assert ponder.shape == (3, sizes[s], sizes[s])
        assert (ponder >= 1).all() and (ponder <= len(blocks) + 1).all()
        total = total + ponder.flatten(1).mean(1)
    torch.testing.assert_close(out.decisions["ponder"], total)
    assert ((out.decisions["density"] > 0) & (out.decisions["density"] < 1)).all()


def test_extreme_thresholds():
    model, x = halting_model(), inputs(2)
    with torch.no_grad():
        first = model(x, policy=GatePolicy.constant(-math.inf, 3))  # halt after the first block
        every = model(x, policy=GatePolicy.constant(math.inf, 3))  # run every block
        masked = model(x, policy=GatePolicy.constant(-math.inf, 3), execution="masked")
    for s in range(3):
        assert (first.decisions[f"ponder_map.{s}"] == 2).all()  # N = 1, R = 1
    assert (first.decisions["density"] == 0).all() and (every.decisions["density"] == 1).all()
    torch.testing.assert_close(first.logits, masked.logits, rtol=1e-10, atol=1e-10)
    assert (every.flops == model.flops(SHAPE)).all()
    gated = sum(branch.full_flops(*size) for b, size in zip(model.branches, ((16, 16), (8, 8), (4, 4)))
                for branch in b)
    halting = sum(unit.flops((unit.fc.in_features, *size)) for units, size in
                  zip(model.halting, ((16, 16), (8, 8), (4, 4))) for unit in units[1:])
    assert (first.flops == model.flops(SHAPE) - gated - halting).all()


def test_training_reaches_the_halting_units():
    torch.manual_seed(0)
    model = create_model("sact_resnet20", width=8, num_classes=5).train()
    x = torch.randn(2, *SHAPE)
    out = model(x)
    assert set(out.aux_losses) == {"ponder"}
    out.aux_losses["ponder"].backward(retain_graph=True)  # through the remainders alone
    assert all(unit.fc.bias.grad.abs().sum() > 0 for units in model.halting for unit in units)
    model.zero_grad()
    (F.cross_entropy(out.logits, torch.tensor([0, 3])) + out.aux_loss()).backward()
    for units in model.halting:
        for unit in units:
            assert torch.isfinite(unit.conv.weight.grad).all() and unit.conv.weight.grad.abs().sum() > 0
            assert unit.fc.weight.grad.abs().sum() > 0


def test_cost_figures_and_plain_checkpoint():
    for name, params, flops in (("sact_resnet20", 274_720, 82_659_008), ("sact_resnet32", 471_398, 140_314_752)):
        model = create_model(name)
        assert sum(p.numel() for p in model.parameters()) == params and model.flops((3, 32, 32)) == flops
        assert f"{params:,} params, {flops:,} FLOPs" in registered_model(name).constructor.__doc__
    plain = create_model("resnet20", width=8)
    result = create_model("sact_resnet20", width=8).load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all(k.startswith("halting.") for k in result.missing_keys)


@pytest.mark.parametrize("eps", [0, 1, -0.1, 1.5, float("nan"), True, "0.1"])
def test_eps_outside_the_open_interval_is_refused(eps):
    with pytest.raises(ConfigError, match=r"'sact_resnet20'.*eps must be a number in \(0, 1\)"):
        create_model("sact_resnet20", eps=eps)


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="ponder_weight"):
        create_model("sact_resnet20", ponder_weight=-1)
    with pytest.raises(ConfigError, match="depth must be 6n \\+ 2 with n >= 2"):
        SACTResNet(8)
    model, x = halting_model(), inputs(1)
    with pytest.raises(ConfigError, match=r"2 thresholds, the model has 3 gates"):
        model(x, policy=GatePolicy((0.5, 0.5)))
    with pytest.raises(ConfigError, match="GatePolicy with one halting threshold per stage"):
        model(x, policy=[0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match=r"expects per-sample inputs"):
        model(torch.randn(1, 1, 16, 16, dtype=torch.float64))
