"""`worst_case_flops` and the early-exit cap: every sample held to the last exit still
stops at the deepest exit the cap allows, exit decisions (a learned exit's head) included."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.flops import counted_flops
from dynamicnets.gates import GatePolicy, fit_learned_exit
from dynamicnets.inference import ExitPolicy, WidthPolicy, run_all_then_select, run_early_exit, worst_case_flops


@pytest.fixture(scope="module")
def exits():
    torch.manual_seed(0)
    model = create_model("multi_exit_cnn", width=8).eval()
    x = torch.randn(24, *model.default_input_shape, generator=torch.Generator().manual_seed(1))
    return model, x, model.exit_costs(model.default_input_shape)


def test_samples_held_to_the_last_exit_stop_at_the_cap(exits):
    model, x, costs = exits
    never = [math.inf] * (model.num_exits - 1)  # no sample leaves early: the slowdown attack's outcome
    policy = ExitPolicy("maxprob", never, max_flops=costs[1] + 1)
    result = run_early_exit(model, x, policy)
    assert (result.exit_index == 1).all() and (result.flops <= policy.max_flops).all()
    assert counted_flops(run_early_exit, model, x, policy) == int(result.flops.sum())
    assert worst_case_flops(model, model.default_input_shape, policy) == costs[1]
    assert worst_case_flops(model, model.default_input_shape, ExitPolicy("maxprob", never)) == costs[-1]
    assert worst_case_flops(model, model.default_input_shape) == costs[-1]


def test_a_learned_exit_cap_counts_the_exit_heads(exits):
    model, x, costs = exits
    with torch.no_grad():
        logits = model(x).exit_logits
    criterion = fit_learned_exit(logits, logits[-1].argmax(1), seed=0)
    head = criterion.flops_per_sample()
    assert head > 0
    never = [math.inf] * (model.num_exits - 1)
    # reaching exit 1 costs its backbone and one head evaluation (at exit 0)
    for cap, last in [(costs[1] + head - 1, 0), (costs[1] + head, 1)]:
        policy = ExitPolicy(criterion, never, max_flops=cap)
        result = run_early_exit(model, x, policy)
        assert (result.exit_index == last).all() and (result.flops <= cap).all()
        assert counted_flops(run_early_exit, model, x, policy) == int(result.flops.sum())
        assert torch.equal(run_all_then_select(model, x, policy).exit_index, result.exit_index)
        assert worst_case_flops(model, model.default_input_shape, policy) == float(result.flops.max())


def test_worst_case_flops_refuses_what_it_cannot_bound():
    torch.manual_seed(0)
    static = create_model("resnet20")
    with pytest.raises(ConfigError, match="ResNet.* states no worst case"):
        worst_case_flops(static, (3, 32, 32), GatePolicy((0.0,), max_flops=1e6))
    with pytest.raises(ConfigError, match="an ExitPolicy needs a multi-exit model"):
        worst_case_flops(nn.Linear(3, 3), (3,), ExitPolicy("maxprob", []))
    skipping = create_model("skipnet_resnet", depth=14)
    with pytest.raises(ConfigError, match="key 'max_flops'"):
        worst_case_flops(skipping, (3, 32, 32), GatePolicy.constant(0.0, skipping.num_gated_blocks, max_flops=1.0))
    dsnet = create_model("dsnet_resnet_cifar")
    assert worst_case_flops(dsnet, (3, 32, 32), WidthPolicy(max_width=0.5)) == dsnet.gate_flops((3, 32, 32)) + float(
        dsnet.width_costs((3, 32, 32))[1])
