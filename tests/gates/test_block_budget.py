"""`BlockBudget` (the greedy compute cap on gated blocks) and the caps of `GatePolicy`:
the rule on unequal block costs, batch == one sample at a time, validation, saving."""
from __future__ import annotations

import io
import math

import pytest
import torch

from dynamicnets.errors import ConfigError
from dynamicnets.gates import BlockBudget, GatePolicy
from dynamicnets.gates.block_budget import worst_case_blocks

COSTS = [4.0, 1.0, 3.0, 2.0]
BASE = 10.0


def test_a_block_that_does_not_fit_is_forced_off_and_later_ones_still_may_run():
    budget = BlockBudget(COSTS, BASE, max_flops=BASE + 6.0)
    on = torch.ones(3, 4, dtype=torch.bool)
    on[1] = torch.tensor([False, True, True, True])
    on[2] = torch.tensor([True, False, True, False])
    capped = budget.apply(on)
    # sample 0: 4 runs (4), 1 runs (5), 3 would make 8 > 6: off, 2 would make 7 > 6: off
    assert capped.tolist() == [[True, True, False, False], [False, True, True, True], [True, False, False, False]]
    forced = budget.forced_off(3, torch.zeros(1))
    assert forced.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 1, 0]]
    spent = capped.double() @ torch.tensor(COSTS, dtype=torch.float64)
    assert (BASE + spent <= BASE + 6.0).all()


def test_a_skipped_expensive_block_leaves_room_for_a_cheap_one():
    budget = BlockBudget([5.0, 3.0, 1.0], 0.0, max_flops=4.0)
    assert budget.apply(torch.ones(1, 3)).tolist() == [[0.0, 1.0, 1.0]]


def test_max_blocks_counts_executed_blocks_only():
    budget = BlockBudget(COSTS, BASE, max_blocks=2)
    gates = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    assert budget.apply(gates).tolist() == [[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]]


def test_one_sample_in_python_numbers_equals_the_batched_rule():
    g = torch.Generator().manual_seed(0)
    gates = torch.rand(16, 4, generator=g) < 0.7
    batched = BlockBudget(COSTS, BASE, max_flops=BASE + 7.0, max_blocks=3).apply(gates)
    for b in range(16):
        one = BlockBudget(COSTS, BASE, max_flops=BASE + 7.0, max_blocks=3)
        row = [one.admit_one(i, bool(gates[b, i])) for i in range(4)]
        assert row == batched[b].tolist()
        assert one.forced_off(1, torch.zeros(1)).bool()[0].tolist() == (gates[b] & ~batched[b]).tolist()


def test_soft_gates_keep_their_value_when_admitted():
    budget = BlockBudget([1.0, 1.0, 1.0], 0.0, max_blocks=2)
    gates = torch.tensor([[0.3, 0.0, 0.8], [0.5, 0.9, 0.2]], requires_grad=True)
    capped = budget.apply(gates)
    assert torch.equal(capped, torch.tensor([[0.3, 0.0, 0.8], [0.5, 0.9, 0.0]]))
    capped.sum().backward()
    assert gates.grad.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]


def test_worst_case_blocks():
    assert worst_case_blocks(COSTS, BASE, None) == BASE + 10.0
    assert worst_case_blocks(COSTS, BASE, GatePolicy.constant(0.0, 4, max_blocks=2)) == BASE + 7.0
    assert worst_case_blocks(COSTS, BASE, GatePolicy.constant(0.0, 4, max_flops=15.0, max_blocks=2)) == 15.0
    assert worst_case_blocks(COSTS, BASE, GatePolicy.constant(0.0, 4, max_blocks=0)) == BASE


def test_a_cap_below_the_cheapest_execution_is_refused():
    with pytest.raises(ConfigError, match="key 'max_flops'.*cheapest execution"):
        BlockBudget(COSTS, BASE, max_flops=BASE - 0.5, owner="model 'x'")
    assert BlockBudget(COSTS, BASE, max_flops=BASE).apply(torch.ones(2, 4)).sum() == 0
    assert BlockBudget.from_policy(GatePolicy.constant(0.0, 4), COSTS, BASE) is None


@pytest.mark.parametrize("key,value", [
    ("max_flops", 0), ("max_flops", -5.0), ("max_flops", math.nan), ("max_flops", True), ("max_flops", "1e6"),
    ("max_blocks", -1), ("max_blocks", 1.5), ("max_blocks", True),
    ("max_density", 0.0), ("max_density", 1.5), ("max_density", -0.1), ("max_density", math.nan),
])
def test_out_of_range_caps_name_their_key(key, value):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        GatePolicy((0.0,), **{key: value})


def test_a_model_refuses_caps_it_does_not_honour():
    policy = GatePolicy((0.0, 0.0), max_blocks=1)
    assert policy.check(2, "model 'm'", caps=("max_blocks",)) is policy
    with pytest.raises(ConfigError, match="model 'm': key 'max_blocks': this model does not honour"):
        policy.check(2, "model 'm'")


def test_caps_round_trip_and_old_policies_still_load():
    policy = GatePolicy((0.5, -1.0), {"calibrated_rate": 0.5}, max_flops=2e6, max_blocks=1, max_density=0.25)
    buffer = io.BytesIO()
    torch.save({"gate_policy": policy.to_dict()}, buffer)
    buffer.seek(0)
    loaded = GatePolicy.from_dict(torch.load(buffer, weights_only=True)["gate_policy"])
    assert loaded == policy and loaded.caps == {"max_flops": 2e6, "max_blocks": 1, "max_density": 0.25}
    old = {"kind": "gate_thresholds", "thresholds": [0.5], "meta": {}}
    assert GatePolicy.from_dict(old).caps == {} and GatePolicy((0.5,)).to_dict() == old
