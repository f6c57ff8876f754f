"""Budget calibration (budgeted batch classification) and the anytime table."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dynamicnets import ConfigError, create_model
from dynamicnets.inference import (
    anytime_table,
    calibrate,
    calibrate_thresholds,
    collect_exit_logits,
    exit_decisions,
    geometric_fractions,
    run_early_exit,
    thresholds_for_fractions,
)

COSTS = [10.0, 25.0, 40.0, 100.0]


def _synthetic(num: int = 3000, classes: int = 10, seed: int = 0):
    """Exits that get more accurate and more confident with depth, as trained ones do."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes, (num,), generator=gen)
    exit_logits = []
    for k, signal in enumerate([1.0, 2.0, 3.0, 5.0]):
        logits = torch.randn(num, classes, generator=gen) * 1.5
        logits[torch.arange(num), targets] += signal * torch.rand(num, generator=gen) * 2
        exit_logits.append(logits)
    return exit_logits, targets


@pytest.mark.parametrize("criterion", ["maxprob", "entropy", "margin"])
@pytest.mark.parametrize("budget", [10.0, 18.0, 30.0, 55.0, 80.0, 100.0])
def test_calibration_meets_the_budget(criterion, budget):
    exit_logits, targets = _synthetic()
    result = calibrate_thresholds(exit_logits, targets, COSTS, budget, criterion=criterion)
    assert len(result.policy.thresholds) == 3
    assert result.mean_flops <= budget
    assert result.mean_flops >= budget - 0.5  # uses the budget, not far below it
    assert math.isclose(sum(result.exit_fractions), 1.0)
    # the reported numbers are what these thresholds really do on the same logits
    from dynamicnets.gates import get_criterion

    scores = [get_criterion(criterion).score(l) for l in exit_logits]
    chosen = exit_decisions(scores, result.policy.thresholds)
    assert math.isclose(float(torch.tensor(COSTS, dtype=torch.float64)[chosen].mean()), result.mean_flops)
    picked = torch.stack(exit_logits)[chosen, torch.arange(len(targets))]
    assert math.isclose(float((picked.argmax(1) == targets).double().mean()), result.accuracy)


def test_more_budget_buys_accuracy_on_exits_that_improve():
    exit_logits, targets = _synthetic()
    accuracies = [calibrate_thresholds(exit_logits, targets, COSTS, b).accuracy for b in (10, 20, 40, 100)]
    assert accuracies[:3] == sorted(accuracies[:3])
    table = anytime_table(exit_logits, targets, COSTS)
    assert accuracies[0] == table[0]["accuracy"] and accuracies[-1] == table[-1]["accuracy"]


@pytest.mark.parametrize("budget", [9.99, 100.5, 0.0])
def test_budget_out_of_range_names_the_attainable_range(budget):
    exit_logits, targets = _synthetic(200)
    with pytest.raises(ConfigError, match=r"attainable range \[10, 100\]"):
        calibrate_thresholds(exit_logits, targets, COSTS, budget)


def test_patience_cannot_be_calibrated_by_score():
    exit_logits, targets = _synthetic(100)
    with pytest.raises(ConfigError, match="patience"):
        calibrate_thresholds(exit_logits, targets, COSTS, 50.0, criterion="patience")


def test_geometric_fractions_and_thresholds():
    q = geometric_fractions(math.log(2.0), 4)
    assert q == pytest.approx([1 / 15, 2 / 15, 4 / 15, 8 / 15])
    assert geometric_fractions(-60.0, 3)[0] == pytest.approx(1.0)
    scores = [torch.linspace(0, 1, 100), torch.linspace(0, 1, 100), torch.zeros(100)]
    thresholds = thresholds_for_fractions(scores, [0.3, 0.0, 0.7])
    chosen = exit_decisions(scores, thresholds)
    assert torch.bincount(chosen, minlength=3).tolist() == [30, 0, 70]
    assert thresholds[1] == math.inf


def test_anytime_table():
    exit_logits, targets = _synthetic(500)
    table = anytime_table(exit_logits, targets, COSTS)
    assert [row["exit"] for row in table] == [0, 1, 2, 3]
    assert [row["flops"] for row in table] == COSTS
    for row, logits in zip(table, exit_logits):
        assert row["accuracy"] == pytest.approx(float((logits.argmax(1) == targets).float().mean()))
    with pytest.raises(ConfigError):
        anytime_table(exit_logits, targets, COSTS[:2])


def test_calibrated_policy_runs_compact_with_the_calibrated_cost():
    torch.manual_seed(0)
    model = create_model("multi_exit_cnn", width=8)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(30.0)
    model.eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(96, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (96,), generator=gen)
    loader = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    costs = model.exit_costs((1, 8, 8))
    budget = 0.5 * (costs[0] + costs[-1])
    result = calibrate(model, loader, budget)
    logits, targets = collect_exit_logits(model, loader)
    assert len(logits) == 3 and logits[0].shape == (96, 10) and torch.equal(targets, y)
    compact = run_early_exit(model, x, result.policy)
    assert compact.mean_flops() == pytest.approx(result.mean_flops)
    assert compact.mean_flops() <= budget
    assert float((compact.predictions == y).double().mean()) == pytest.approx(result.accuracy)
    assert not model.training
