"""ConvNet-AIG's target-rate loss and ACT/SACT halting: values, and that training moves them."""
from __future__ import annotations

import pytest
import torch
from skipping_helpers import build, center_decisions, inputs

from dynamicnets.models.skipping import HaltingState, target_rate_loss


def test_target_rate_loss_values():
    gates = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # block rates 1.0 and 0.5, overall 0.75
    target = torch.tensor([0.5, 0.5])
    assert target_rate_loss(gates, target, "per_block").item() == pytest.approx((0.25 + 0) / 2)
    assert target_rate_loss(gates, target, "global").item() == pytest.approx(0.0625)


def execution_rate(model, x) -> float:
    """Mean train-mode execution rate over a few fixed Gumbel draws."""
    with torch.no_grad():
        rates = [model(x, generator=torch.Generator().manual_seed(s)).decisions["gates"].mean()
                 for s in range(4)]
    return float(torch.stack(rates).mean())


@pytest.mark.parametrize("rate_loss", ["per_block", "global"])
@pytest.mark.parametrize("target,bias", [(0.1, 2.0), (0.9, -2.0)])
def test_target_rate_loss_pushes_the_execution_rate(rate_loss, target, bias):
    model = build("convnet_aig", target_rate=target, rate_loss=rate_loss, gate_bias_init=bias,
                  rate_weight=10.0).train()
    x = inputs(8)
    before = execution_rate(model, x)
    params = [p for g in model.gates for p in g.parameters()]
    optimizer = torch.optim.SGD(params, lr=1.0)
    for step in range(15):
        out = model(x, generator=torch.Generator().manual_seed(100 + step))
        optimizer.zero_grad()
        out.aux_losses["target_rate"].backward()
        optimizer.step()
    after = execution_rate(model, x)
    assert abs(after - target) < abs(before - target) - 0.3, (before, after)


def test_halting_arithmetic():
    """h = 0.3, 0.5, (0.4): the cumulative score passes 0.99 at block 3, N = 3, R = 0.2."""
    state = HaltingState(torch.zeros(2), eps=0.01)
    w1 = state.step(None, torch.tensor([0.3, 0.995]))
    w2 = state.step(torch.tensor([0]), torch.tensor([0.5]))  # sample 1 halted at block 1
    w3 = state.step(torch.tensor([0]), None)  # last block
    torch.testing.assert_close(w1, torch.tensor([0.3, 1.0]))
    torch.testing.assert_close(torch.cat([w2, w3]), torch.tensor([0.5, 0.2]))
    torch.testing.assert_close(w1[0] + w2[0] + w3[0], torch.tensor(1.0))  # a weighted mean
    torch.testing.assert_close(state.count, torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(state.remainder, torch.tensor([0.2, 1.0]))
    assert not state.running.any()


@pytest.mark.parametrize("config", ["act", "sact"])
def test_depth_decisions_and_ponder_bounds(config):
    model = build(config, depth=20)
    x = inputs(8)
    center_decisions(model, x, gain=5.0)
    with torch.no_grad():
        out = model(x)
    depth = out.decisions["depth"]
    assert depth.shape == (8, 3) and ((depth >= 1) & (depth <= 3)).all()
    assert depth.unique().numel() > 1
    # gates say which of blocks 2..n of each stage ran
    assert torch.equal(out.decisions["gates"].view(8, 3, 2).sum(-1).long() + 1, depth)
    ponder = out.decisions["ponder"]
    # per stage N + R with R in (eps, 1], N <= the blocks run (SACT: averaged over positions)
    assert ((ponder > 3 * 1.01) & (ponder <= depth.sum(1) + 3 + 1e-5)).all()
    if config == "sact":
        assert (out.decisions["position_depth"] <= depth + 1e-6).all()


@pytest.mark.parametrize("config", ["act", "sact"])
def test_ponder_cost_training_halts_earlier(config):
    model = build(config, depth=20, ponder_weight=1.0).train()
    x = inputs(8)
    params = [p for units in model.halting for u in units for p in u.parameters()]
    optimizer = torch.optim.SGD(params, lr=2.0)
    ponders = []
    for _ in range(10):
        out = model(x)
        ponders.append(float(out.decisions["ponder"].mean()))
        optimizer.zero_grad()
        out.aux_losses["ponder"].backward()
        optimizer.step()
    assert ponders[-1] < ponders[0] - 0.5, ponders
