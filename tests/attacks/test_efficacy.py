"""Efficacy, the area under DeepSloth's early-exit capability curve: its extremes, its
agreement with the trapezoid rule, and its inputs checked."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.attacks import early_exit_curve, efficacy, exit_indices_from_flops

COSTS = [10.0, 25.0, 60.0, 100.0]  # cumulative per-sample FLOPs of four exits


def test_everyone_at_the_first_exit_is_the_upper_extreme():
    index = torch.zeros(50, dtype=torch.int64)
    assert efficacy(COSTS, exit_index=index) == pytest.approx(1 - COSTS[0] / (2 * COSTS[-1]))


def test_everyone_at_the_last_exit_is_the_lower_extreme():
    index = torch.full((50,), len(COSTS) - 1)
    assert efficacy(COSTS, exit_index=index) == pytest.approx((1 - COSTS[-2] / COSTS[-1]) / 2)


def test_area_is_the_trapezoid_rule_over_the_curve():
    index = torch.tensor([0, 0, 1, 2, 3, 3, 3, 1])
    x, y = early_exit_curve(COSTS, index)
    assert x == [0.0, 0.1, 0.25, 0.6, 1.0]
    assert y == [0.0, 2 / 8, 4 / 8, 5 / 8, 1.0]
    expected = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(x, x[1:], y, y[1:]))
    assert efficacy(COSTS, exit_index=index) == pytest.approx(expected)
    assert efficacy(COSTS, exit_index=index) == pytest.approx(float(torch.trapezoid(torch.tensor(y), torch.tensor(x))))


def test_a_later_exit_never_raises_efficacy():
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, len(COSTS), (40,), generator=gen)
    base = efficacy(COSTS, exit_index=index)
    for i in range(40):
        if index[i] < len(COSTS) - 1:
            later = index.clone()
            later[i] += 1
            assert efficacy(COSTS, exit_index=later) < base


def test_flops_are_mapped_to_the_exits_they_cost():
    index = torch.tensor([3, 0, 2, 1, 1])
    flops = torch.tensor(COSTS, dtype=torch.float64)[index]
    assert torch.equal(exit_indices_from_flops(flops, COSTS), index)
    assert efficacy(COSTS, flops=flops) == efficacy(COSTS, exit_index=index)


@pytest.mark.parametrize("call, named", [
    (lambda: efficacy(COSTS), "efficacy"),
    (lambda: efficacy(COSTS, exit_index=torch.tensor([0]), flops=torch.tensor([10.0])), "efficacy"),
    (lambda: efficacy(COSTS, exit_index=torch.tensor([4])), "exit_index"),
    (lambda: efficacy(COSTS, exit_index=torch.tensor([-1])), "exit_index"),
    (lambda: efficacy(COSTS, exit_index=torch.tensor([0.0])), "exit_index"),
    (lambda: efficacy(COSTS, exit_index=torch.tensor([], dtype=torch.int64)), "exit_index"),
    (lambda: efficacy(COSTS, flops=torch.tensor([11.0])), "flops"),
    (lambda: efficacy([10.0, 5.0], exit_index=torch.tensor([0])), "exit_costs"),
    (lambda: efficacy([0.0, 5.0], exit_index=torch.tensor([0])), "exit_costs"),
])
def test_bad_input_names_the_argument(call, named):
    with pytest.raises(ConfigError, match=rf"^{named}:"):
        call()
