"""The learned exit criterion driving budget calibration and the compact executor."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dynamicnets import create_model
from dynamicnets.gates import LearnedExitCriterion, fit_learned_exit
from dynamicnets.inference import ExitPolicy, calibrate_thresholds, run_all_then_select, run_early_exit
from dynamicnets.flops import counted_flops


@pytest.fixture(scope="module")
def setup():
    """A random `multi_exit_cnn` with spread-out logits, a validation and a test batch.

    Labels are the last exit's predictions, so "exit k is correct" means "exit k already
    gives the answer the full network would": the head learns when leaving early is safe.
    """
    torch.manual_seed(0)
    model = create_model("multi_exit_cnn", width=8)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(30.0)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    x_val = torch.randn(256, *model.default_input_shape, generator=gen)
    x_test = torch.randn(96, *model.default_input_shape, generator=gen)
    with torch.no_grad():
        val_logits = model(x_val).exit_logits
    targets = val_logits[-1].argmax(1)
    criterion = fit_learned_exit(val_logits, targets, seed=0)
    costs = model.exit_costs(model.default_input_shape)
    return model, x_val, x_test, val_logits, targets, criterion, costs


def _assert_same(compact, reference):
    assert torch.equal(compact.exit_index, reference.exit_index)
    assert torch.equal(compact.predictions, reference.predictions)
    assert torch.equal(compact.flops, reference.flops)
    torch.testing.assert_close(compact.logits, reference.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_calibration_meets_the_budget_and_the_executor_does_what_it_promised(setup, fraction):
    model, x_val, _, val_logits, targets, criterion, costs = setup
    budget = costs[0] + fraction * (costs[-1] - costs[0])
    result = calibrate_thresholds(val_logits, targets, costs, budget, criterion=criterion)
    assert result.policy.criterion is criterion and len(result.policy.thresholds) == 2
    assert costs[0] < result.mean_flops <= budget
    assert sum(f > 0 for f in result.exit_fractions) >= 2  # a real mix of exits
    # the compact executor on the same split spends exactly what calibration measured
    compact = run_early_exit(model, x_val, result.policy)
    assert compact.mean_flops() == pytest.approx(result.mean_flops, rel=1e-12)
    accuracy = float((compact.predictions == targets).double().mean())
    assert accuracy == pytest.approx(result.accuracy, rel=1e-12)


def test_compact_equals_reference_and_the_head_cost_is_visible(setup):
    model, _, x_test, val_logits, targets, criterion, costs = setup
    budget = 0.5 * (costs[0] + costs[-1])
    policy = calibrate_thresholds(val_logits, targets, costs, budget, criterion=criterion).policy
    compact = run_early_exit(model, x_test, policy)
    _assert_same(compact, run_all_then_select(model, x_test, policy))
    assert len(set(compact.exit_index.tolist())) >= 2
    # `flops` charges the head's two linear layers once per sample scored at every exit
    # before the last, exactly what FlopCounterMode sees on top of the backbone.
    scored = sum(int((compact.exit_index >= k).sum()) for k in range(model.num_exits - 1))
    backbone = sum(costs[k] for k in compact.exit_index.tolist())
    assert int(compact.flops.sum()) == backbone + scored * criterion.flops_per_sample()
    assert counted_flops(run_early_exit, model, x_test, policy) == int(compact.flops.sum())


def test_policy_reloaded_from_a_checkpoint_decides_the_same(setup, tmp_path):
    model, _, x_test, val_logits, targets, criterion, costs = setup
    policy = calibrate_thresholds(val_logits, targets, costs, 0.5 * (costs[0] + costs[-1]), criterion=criterion).policy
    path = tmp_path / "policy.pt"
    torch.save({"thresholds": list(policy.thresholds), "criterion": criterion.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    reloaded = ExitPolicy(
        criterion=LearnedExitCriterion.from_state_dict(saved["criterion"], source=str(path)),
        thresholds=saved["thresholds"],
    )
    before, after = run_early_exit(model, x_test, policy), run_early_exit(model, x_test, reloaded)
    assert torch.equal(before.exit_index, after.exit_index)
    assert torch.equal(before.predictions, after.predictions)
