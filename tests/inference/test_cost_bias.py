"""The cost-proportional bias fit: within budget, the largest such cost, never on a tie."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.inference.cost_bias import (
    biased_choice, collect_scores, cost_bias, fit_cost_multiplier, mean_chosen_cost, tie_points,
)

COSTS = torch.tensor([5.0, 20.0, 45.0, 80.0], dtype=torch.float64)


def scores(n: int = 300, seed: int = 0, frugal: float = 0.0) -> torch.Tensor:
    s = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    s[:, 0] += frugal
    return s


@pytest.mark.parametrize("frugal, budget, spend", [(0.0, 20.0, False), (0.0, 30.0, True), (4.0, 40.0, True),
                                                   (0.0, 60.0, False), (-3.0, 12.0, False)])
def test_the_fit_is_within_budget_the_largest_such_and_off_every_tie(frugal, budget, spend):
    s = scores(frugal=frugal)
    lam = fit_cost_multiplier(s, COSTS, budget, cap=3, spend_budget=spend)
    spent = mean_chosen_cost(s, COSTS, lam, 3)
    assert spent <= budget
    ties = tie_points(s, COSTS)
    earlier = [t for t in ties if t < lam]
    if lam != 0.0 and earlier:  # one step further down the multiplier spends more than the budget
        before = max(earlier)
        assert mean_chosen_cost(s, COSTS, before - 1e-9 * (1 + abs(before)), 3) > budget
    biased = torch.sort(s + cost_bias(COSTS, lam), dim=1, descending=True).values
    assert float((biased[:, 0] - biased[:, 1]).min()) > 1e-9  # no sample on a tie


def test_without_spending_a_predictor_within_budget_keeps_its_own_choices():
    s = scores()
    assert fit_cost_multiplier(s, COSTS, 1e9, cap=3) == 0.0
    assert torch.equal(biased_choice(s, COSTS, 0.0, 3), s.argmax(dim=1))


def test_the_cap_bounds_every_choice():
    s = scores(frugal=-5.0)
    lam = fit_cost_multiplier(s, COSTS, 80.0, cap=1, spend_budget=True)
    assert int(biased_choice(s, COSTS, lam, 1).max()) <= 1


def test_non_finite_scores_are_refused_instead_of_searched_forever():
    model = torch.nn.Linear(3, 4)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="not all finite"):
        collect_scores(model, torch.randn(5, 3), model, "calibrate_width_policy")
