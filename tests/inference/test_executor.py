"""The compact early-exit executor against the run-everything reference, and its FLOPs."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dynamicnets import ConfigError, create_model
from dynamicnets.gates import get_criterion
from dynamicnets.inference import ExitPolicy, run_all_then_select, run_early_exit
from dynamicnets.flops import counted_flops

MODELS = {
    "multi_exit_cnn": {"width": 8},
    "cascade": {"member_args": [{"width": 4}, {"width": 8}]},
    "msdnet_cifar": {
        "in_chans": 1, "num_blocks": 3, "base": 1, "step": 1, "head_channels": 8, "default_input_shape": (1, 8, 8),
    },
}


def _model(name: str) -> nn.Module:
    """A randomly initialised model whose logits are spread out (so exits disagree)."""
    torch.manual_seed(0)
    model = create_model(name, **MODELS[name])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(30.0)
    return model.eval()


def _inputs(model: nn.Module, batch: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *model.default_input_shape, generator=gen)


def _quantile_thresholds(model, x, criterion: str, fraction: float) -> list[float]:
    """Per-exit thresholds halfway between scores, letting about `fraction` of the
    samples still running at each exit leave (no sample sits on a threshold)."""
    crit = get_criterion(criterion)
    with torch.no_grad():
        exit_logits = model(x).exit_logits
    thresholds = []
    for logits in exit_logits[:-1]:
        ranked = torch.sort(crit.score(logits), descending=True).values
        n = max(1, int(fraction * len(ranked)))
        thresholds.append(float(ranked[n - 1] + ranked[n]) / 2)
    return thresholds


def _assert_same(compact, reference):
    assert torch.equal(compact.exit_index, reference.exit_index)
    assert torch.equal(compact.predictions, reference.predictions)
    assert torch.equal(compact.flops, reference.flops)
    torch.testing.assert_close(compact.logits, reference.logits, rtol=1e-4, atol=1e-4)


def _assert_counted(model, x, policy, result):
    counted = counted_flops(run_early_exit, model, x, policy)
    assert counted == int(result.flops.sum().item())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("criterion", ["maxprob", "entropy", "margin"])
def test_compact_equals_reference_and_counter(name, criterion):
    model = _model(name)
    x = _inputs(model, 48)
    policy = ExitPolicy(criterion, _quantile_thresholds(model, x, criterion, 0.4))
    compact = run_early_exit(model, x, policy)
    _assert_same(compact, run_all_then_select(model, x, policy))
    histogram = compact.exit_histogram(model.num_exits)
    assert histogram[0] > 0 and histogram[-1] > 0  # a real mix of exits
    assert compact.mean_flops() < model.exit_costs(model.default_input_shape)[-1]
    _assert_counted(model, x, policy, compact)


@pytest.mark.parametrize("name", ["multi_exit_cnn", "msdnet_cifar"])
def test_patience_uses_the_history_of_the_samples_still_running(name):
    model = _model(name)
    x = _inputs(model, 64)
    policy = ExitPolicy("patience", [2] * (model.num_exits - 1))  # two agreeing exits in a row
    compact = run_early_exit(model, x, policy)
    _assert_same(compact, run_all_then_select(model, x, policy))
    assert (compact.exit_index == 0).sum() == 0  # one exit cannot agree with a previous one
    assert len(set(compact.exit_index.tolist())) >= 2
    _assert_counted(model, x, policy, compact)


@pytest.mark.parametrize(
    "thresholds, expected_exit",
    [
        ([math.inf, math.inf], 2),  # nobody exits early
        ([-math.inf, -math.inf], 0),  # everybody leaves at the first exit
    ],
)
def test_degenerate_batches(thresholds, expected_exit):
    model = _model("multi_exit_cnn")
    x = _inputs(model, 16)
    policy = ExitPolicy("maxprob", thresholds)
    compact = run_early_exit(model, x, policy)
    _assert_same(compact, run_all_then_select(model, x, policy))
    assert torch.all(compact.exit_index == expected_exit)
    costs = model.exit_costs(model.default_input_shape)
    assert counted_flops(run_early_exit, model, x, policy) == 16 * costs[expected_exit]


def test_batch_size_one_at_every_exit():
    model = _model("multi_exit_cnn")
    x = _inputs(model, 40)
    policy = ExitPolicy("maxprob", _quantile_thresholds(model, x, "maxprob", 0.4))
    batched = run_early_exit(model, x, policy)
    for i in range(x.shape[0]):
        single = run_early_exit(model, x[i : i + 1], policy)
        assert single.exit_index.item() == batched.exit_index[i].item()
        assert single.predictions.item() == batched.predictions[i].item()
        assert single.flops.item() == batched.flops[i].item()
    assert len(set(batched.exit_index.tolist())) == 3


def test_max_flops_caps_every_sample():
    model = _model("multi_exit_cnn")
    x = _inputs(model, 32)
    costs = model.exit_costs(model.default_input_shape)
    capped = ExitPolicy("maxprob", [math.inf, math.inf], max_flops=costs[1] + 1)
    result = run_early_exit(model, x, capped)
    assert torch.all(result.exit_index == 1) and result.flops.max() <= capped.max_flops
    _assert_same(result, run_all_then_select(model, x, capped))
    assert counted_flops(run_early_exit, model, x, capped) == 32 * costs[1]
    with pytest.raises(ConfigError, match="max_flops"):
        run_early_exit(model, x, ExitPolicy("maxprob", [0.5, 0.5], max_flops=costs[0] - 1))


def test_misuse_is_a_config_error():
    model = _model("multi_exit_cnn")
    x = _inputs(model, 4)
    with pytest.raises(ConfigError, match="2 thresholds"):
        run_early_exit(model, x, ExitPolicy("maxprob", [0.5]))
    with pytest.raises(ConfigError, match="unknown exit criterion"):
        run_early_exit(model, x, ExitPolicy("confidence", [0.5, 0.5]))
    with pytest.raises(ConfigError, match="integers >= 1"):
        run_early_exit(model, x, ExitPolicy("patience", [math.inf, 2]))
    with pytest.raises(ConfigError, match="model.eval"):
        run_early_exit(model.train(), x, ExitPolicy("maxprob", [0.5, 0.5]))
    with pytest.raises(ConfigError, match="multi-exit"):
        run_early_exit(create_model("small_cnn").eval(), x, ExitPolicy("maxprob", []))


def test_result_as_dynamic_output():
    model = _model("multi_exit_cnn")
    x = _inputs(model, 8)
    result = run_early_exit(model, x, ExitPolicy("maxprob", [0.9, 0.9]))
    out = result.as_output()
    assert out.logits is result.logits and torch.equal(out.decisions["exit_index"], result.exit_index)
    assert out.mean_flops() == result.mean_flops()
