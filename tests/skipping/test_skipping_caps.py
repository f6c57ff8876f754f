"""Compute caps of layer skipping (`GatePolicy(max_flops=..., max_blocks=...)`): no input,
however its gates decide, costs more than the cap; the compact FLOPs under a cap are what
`FlopCounterMode` counts; masked and compact agree; the rule is greedy in block order."""
from __future__ import annotations

import math

import pytest
import torch
from skipping_helpers import SHAPE, build, center_decisions, inputs

from dynamicnets.errors import ConfigError
from dynamicnets.flops import counted_flops
from dynamicnets.gates import GatePolicy
from dynamicnets.inference import worst_case_flops

CONFIGS = ["skipnet_ff", "skipnet_rnn", "convnet_aig", "blockdrop"]
ALL_ON = -math.inf  # every gate logit is above it: the slowdown attack's decisions


def model_and_costs(config: str):
    model = build(config, depth=20).eval()
    fixed, costs = model.block_costs(SHAPE)
    return model, fixed + model.decision_flops(SHAPE), costs


def greedy_reference(gates: torch.Tensor, costs: torch.Tensor, room: float, max_blocks: int | None) -> torch.Tensor:
    """The documented rule, one sample and one block at a time."""
    capped = torch.zeros_like(gates)
    for b in range(gates.shape[0]):
        spent, count = 0.0, 0
        for i in range(gates.shape[1]):
            fits = spent + float(costs[i]) <= room and (max_blocks is None or count < max_blocks)
            if gates[b, i] != 0 and fits:
                capped[b, i], spent, count = gates[b, i], spent + float(costs[i]), count + 1
    return capped


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("config", CONFIGS)
def test_all_gates_on_cannot_exceed_the_cap(config, batch):
    model, base, costs = model_and_costs(config)
    blocks = model.num_gated_blocks
    cap = base + 2.5 * float(costs[0])  # room for two gated blocks (equal costs in a ResNet)
    policy = GatePolicy.constant(ALL_ON, blocks, max_flops=cap)
    x = inputs(batch)
    with torch.no_grad():
        compact = model(x, policy=policy)
        masked = model(x, policy=policy, execution="masked")
        uncapped = model(x, policy=GatePolicy.constant(ALL_ON, blocks))
    gates = compact.decisions["gates"]
    assert (uncapped.decisions["gates"] == 1).all() and (uncapped.flops > cap).all()  # the attack works
    assert (compact.flops <= cap).all() and (masked.decisions["compact_flops"] <= cap).all()
    # greedy in block order: the first two blocks run, the rest are forced off
    expected = torch.zeros(batch, blocks)
    expected[:, :2] = 1
    assert torch.equal(gates, expected)
    assert torch.equal(compact.decisions["forced_off"], 1 - expected)
    # honest costs: what ran, as FlopCounterMode counts it
    assert int(compact.flops.sum()) == counted_flops(lambda: model(x, policy=policy))
    torch.testing.assert_close(compact.flops, base + gates.double() @ costs)
    # masked and compact take the same capped decisions and compute the same logits
    assert torch.equal(masked.decisions["gates"], gates)
    torch.testing.assert_close(masked.logits, compact.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(masked.decisions["compact_flops"], compact.flops)
    assert worst_case_flops(model, SHAPE, policy) >= float(compact.flops.max())


@pytest.mark.parametrize("config", CONFIGS)
def test_given_decisions_are_capped_by_the_greedy_rule(config):
    model, base, costs = model_and_costs(config)
    blocks = model.num_gated_blocks
    x = inputs(6)
    gates = (torch.rand(6, blocks, generator=torch.Generator().manual_seed(3)) < 0.7).float()
    gates[0] = 1
    for max_flops, max_blocks in [(base + 3 * float(costs[0]), None), (None, 2), (base + 3.2 * float(costs[0]), 2)]:
        fixed = base - model.decision_flops(SHAPE)  # given gates: no gate network runs
        room = math.inf if max_flops is None else max_flops - fixed
        policy = GatePolicy.constant(0.0, blocks, max_flops=max_flops, max_blocks=max_blocks)
        with torch.no_grad():
            compact = model(x, gates=gates, policy=policy)
            masked = model(x, gates=gates, policy=policy, execution="masked")
        expected = greedy_reference(gates, costs, room, max_blocks)
        assert torch.equal(compact.decisions["gates"], expected)
        assert torch.equal(compact.decisions["forced_off"], gates - expected)
        assert torch.equal(masked.decisions["gates"], expected)
        torch.testing.assert_close(masked.logits, compact.logits, rtol=1e-5, atol=1e-5)
        assert int(compact.flops.sum()) == counted_flops(lambda: model(x, gates=gates, policy=policy))
        if max_flops is not None:
            assert (compact.flops <= max_flops).all()
        if max_blocks is not None:
            assert (compact.decisions["gates"].sum(dim=1) <= max_blocks).all()


@pytest.mark.parametrize("config", CONFIGS)
def test_a_cap_above_every_decision_changes_nothing(config):
    model = build(config, depth=20)
    x = inputs(8)
    center_decisions(model, x)
    blocks = model.num_gated_blocks
    with torch.no_grad():
        plain = model(x)
        loose = model(x, policy=GatePolicy.constant(0.0, blocks, max_flops=model.full_flops(SHAPE),
                                                    max_blocks=blocks))
        tight = model(x, policy=GatePolicy.constant(0.0, blocks, max_blocks=1))
    assert 0 < plain.decisions["gates"].mean() < 1  # the decisions really differ
    assert "forced_off" not in plain.decisions
    assert torch.equal(loose.decisions["gates"], plain.decisions["gates"]) and torch.equal(loose.logits, plain.logits)
    assert not loose.decisions["forced_off"].any()
    assert (tight.decisions["gates"].sum(dim=1) <= 1).all() and tight.decisions["forced_off"].any()
    # a capped sample alone gets what it got in the batch
    with torch.no_grad():
        alone = model(x[2:3], policy=GatePolicy.constant(0.0, blocks, max_blocks=1))
    assert torch.equal(alone.decisions["gates"], tight.decisions["gates"][2:3])
    assert alone.flops.item() == tight.flops[2].item()


def test_worst_case_flops_is_the_bound_the_attack_reaches():
    model, base, costs = model_and_costs("convnet_aig")
    blocks = model.num_gated_blocks
    policy = GatePolicy.constant(ALL_ON, blocks, max_blocks=3)
    with torch.no_grad():
        out = model(inputs(2), policy=policy)
    bound = worst_case_flops(model, SHAPE, policy)
    assert bound == base + 3 * float(costs[0]) == float(out.flops.max())
    assert worst_case_flops(model, SHAPE) == model.full_flops(SHAPE)
    capped = GatePolicy.constant(ALL_ON, blocks, max_flops=base + 1.5 * float(costs[0]))
    assert worst_case_flops(model, SHAPE, capped) == base + 1.5 * float(costs[0])


def test_the_cap_is_not_used_in_training():
    model = build("convnet_aig", depth=20).train()
    out = model(inputs(3), policy=GatePolicy.constant(0.0, model.num_gated_blocks, max_blocks=0))
    assert "forced_off" not in out.decisions and out.decisions["gates"].sum() > 0


def test_out_of_range_caps_are_config_errors_naming_the_key():
    model, base, _ = model_and_costs("skipnet_ff")
    blocks = model.num_gated_blocks
    with pytest.raises(ConfigError, match="key 'max_flops'.*below the cheapest execution"):
        model(inputs(1), policy=GatePolicy.constant(0.0, blocks, max_flops=base - 1))
    with pytest.raises(ConfigError, match="key 'max_flops'"):
        worst_case_flops(model, SHAPE, GatePolicy.constant(0.0, blocks, max_flops=base - 1))
    with pytest.raises(ConfigError, match="key 'max_density': this model does not honour"):
        model(inputs(1), policy=GatePolicy.constant(0.0, blocks, max_density=0.5))
    assert model(inputs(1), policy=GatePolicy.constant(0.0, blocks, max_flops=base)).decisions["gates"].sum() == 0
