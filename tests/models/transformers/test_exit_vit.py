"""ExitViT: the exit executor and budget calibration run it unchanged; its costs are honest."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops
from dynamicnets.gates import get_criterion
from dynamicnets.inference import ExitPolicy, calibrate, run_all_then_select, run_early_exit
from dynamicnets.models.transformers import ExitViT
from dynamicnets.protocols import MultiExit
from dynamicnets.training.checkpoint import save_checkpoint
from dynamicnets.training.initialise import load_initial_weights
from dynamicnets.training.losses import multi_exit_loss

SMALL = {"img_size": 16, "embed_dim": 32, "num_heads": 2, "depth": 4, "exit_after": (0, 2, 3)}


def _small(seed: int = 0, scale: float = 1.0) -> ExitViT:
    """A small ExitViT; `scale` multiplies every linear weight so exits disagree."""
    torch.manual_seed(seed)
    model = create_model("exit_vit_cifar", **SMALL)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(scale)
    return model.eval()


def _images(batch: int, seed: int = 1, side: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_registered_models_and_the_multi_exit_protocol():
    model = create_model("exit_vit_cifar")
    assert isinstance(model, MultiExit) and model.num_exits == 3 and model.exit_after == (1, 3, 5)
    assert list(model.classifier_paths) == ["exit_heads.0.fc", "exit_heads.1.fc", "head"]
    deit = create_model("exit_deit_tiny_patch16_224", device="meta")
    assert deit.exit_after == (1, 3, 5, 7, 9, 11) and deit.num_exits == 6


def test_exit_costs_are_the_counted_cost_of_each_prefix():
    """Exit costs on 3x32x32 (the module docstring's table), each the counter's figure for
    running the segments and heads up to that exit."""
    model = create_model("exit_vit_cifar").eval()
    costs = model.exit_costs((3, 32, 32))
    assert costs == [39_194_112, 77_601_792, 116_009_472]
    assert costs[-1] == create_model("vit_cifar").flops() + 2 * 2 * 128 * 10
    x = torch.randn(2, 3, 32, 32)

    def prefix(last: int) -> None:
        state = None
        for k in range(last + 1):
            state = model.run_segment(k, state, x)
            model.exit_logits(k, state)

    for k, cost in enumerate(costs):
        assert counted_flops(prefix, k) == 2 * cost
    with torch.no_grad():
        out = model(x)
    assert out.flops.tolist() == [float(costs[-1])] * 2 and counted_flops(model, x) == 2 * costs[-1]


def test_forward_trains_every_exit():
    model = _small().train()
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    out = model(x)
    assert len(out.exit_logits) == 3 and all(e.shape == (4, 10) for e in out.exit_logits)
    assert out.logits is out.exit_logits[-1]
    multi_exit_loss(out, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the final exit is the ViT's own norm + head on the class token
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), out.logits)


@pytest.mark.parametrize("criterion", ["maxprob", "entropy", "margin", "patience"])
def test_executor_equals_run_all_then_select_and_counts_its_flops(criterion):
    model = _small(scale=30.0)
    x = _images(24)
    thresholds = [2.0, 2.0] if criterion == "patience" else None
    if thresholds is None:
        crit = get_criterion(criterion)
        with torch.no_grad():
            exit_logits = model(x).exit_logits
        thresholds = []
        for logits in exit_logits[:-1]:
            ranked = torch.sort(crit.score(logits), descending=True).values
            thresholds.append(float(ranked[7] + ranked[8]) / 2)
    policy = ExitPolicy(criterion, thresholds)
    compact = run_early_exit(model, x, policy)
    reference = run_all_then_select(model, x, policy)
    assert torch.equal(compact.exit_index, reference.exit_index)
    assert torch.equal(compact.predictions, reference.predictions)
    assert torch.equal(compact.flops, reference.flops)
    torch.testing.assert_close(compact.logits, reference.logits, rtol=1e-4, atol=1e-4)
    histogram = compact.exit_histogram(model.num_exits)
    if criterion != "patience":
        assert histogram[0] > 0 and histogram[-1] > 0, histogram
    # per-sample FLOPs are what the compact executor really ran, at batch 24
    assert counted_flops(run_early_exit, model, x, policy) == int(compact.flops.sum().item())
    with torch.no_grad():
        called = model(x, policy)  # the policy in the call: the same real early exits
    torch.testing.assert_close(called.logits, compact.logits)
    assert torch.equal(called.flops, compact.flops)
    assert torch.equal(called.decisions["exit_index"], compact.exit_index)
    costs = model.exit_costs((3, 16, 16))
    assert compact.flops.tolist() == [float(costs[int(k)]) for k in compact.exit_index]


def test_compute_cap_bounds_every_sample():
    model = _small(scale=30.0)
    x = _images(8)
    costs = model.exit_costs((3, 16, 16))
    result = run_early_exit(model, x, ExitPolicy("maxprob", [2.0, 2.0], max_flops=costs[1]))
    assert result.flops.max() <= costs[1] and (result.exit_index == 1).all()


def test_calibration_meets_the_budget():
    model = _small(scale=30.0)
    batches = [(_images(16, seed=s), torch.randint(0, 10, (16,))) for s in range(3)]
    costs = model.exit_costs((3, 16, 16))
    budget = 0.5 * (costs[0] + costs[-1])
    result = calibrate(model, batches, budget)
    assert result.mean_flops <= budget and sum(result.exit_fractions) == pytest.approx(1.0)
    assert result.exit_fractions[0] > 0 and result.exit_fractions[-1] > 0
    x = torch.cat([b[0] for b in batches])
    executed = run_early_exit(model, x, result.policy)
    assert executed.mean_flops() == pytest.approx(result.mean_flops)
    with pytest.raises(ConfigError, match="outside the attainable range"):
        calibrate(model, batches, costs[0] / 2)


def test_a_static_checkpoint_loads_and_the_final_exit_is_the_static_model(tmp_path):
    torch.manual_seed(3)
    static = create_model("vit_cifar", img_size=16, embed_dim=32, num_heads=2, depth=4).eval()
    save_checkpoint(tmp_path / "best.pt", {"model": static.state_dict()})
    model = _small(seed=5)
    copied, total = load_initial_weights(model, tmp_path / "best.pt")
    assert copied == len(static.state_dict()) and total == copied + 8  # 2 exit heads x (norm, fc) x (weight, bias)
    x = _images(3)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, static(x).logits)


@pytest.mark.parametrize("bad", [(0, 2), (2, 1, 3), (0, 4), (-1, 3), [], "0,3", (0.5, 3)])
def test_bad_exit_after_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="exit_after"):
        create_model("exit_vit_cifar", **{**SMALL, "exit_after": bad})


def test_executor_refuses_training_mode():
    model = _small().train()
    with pytest.raises(ConfigError, match="training mode"):
        run_early_exit(model, _images(2), ExitPolicy("maxprob", [0.5, 0.5]))
