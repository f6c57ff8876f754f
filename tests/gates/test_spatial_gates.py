"""Spatial gates (DynConv's mask unit), their decisions, tile expansion and the FLOPs
budget loss with annealed block bounds."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dynamicnets.errors import ConfigError
from dynamicnets.gates.flops_budget import block_bounds, check_budget, flops_budget_loss
from dynamicnets.gates.spatial import SpatialMaskGate, expand_tiles, spatial_decisions

DT = torch.float64
CHANS = 5


def make_gate(tile: int, kernel_size: int = 1, seed: int = 0) -> SpatialMaskGate:
    torch.manual_seed(seed)
    gate = SpatialMaskGate(CHANS, tile, kernel_size, bias_init=0.5, dtype=DT)
    with torch.no_grad():
        gate.conv.weight.normal_()
    return gate


def make_input(batch: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, CHANS, height, width, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ------------------------------------------------------------------ SpatialMaskGate


@pytest.mark.parametrize("tile,height,width,grid", [
    (1, 13, 11, (13, 11)),
    (4, 16, 8, (4, 2)),     # divides
    (4, 13, 11, (4, 3)),    # does not divide: partial last row and column of tiles
    (5, 13, 11, (3, 3)),
    (16, 13, 11, (1, 1)),   # one tile bigger than the map
])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_gate_shape_and_flops(tile, height, width, grid, kernel_size):
    gate = make_gate(tile, kernel_size)
    x = make_input(2, height, width)
    with FlopCounterMode(display=False) as counter:
        logits = gate(x)
    assert logits.shape == (2, *grid) and logits.dtype == DT
    assert gate.grid(height, width) == grid
    assert gate.flops(height, width) * 2 == counter.get_total_flops()


def test_tile_logits_score_the_mean_of_the_positions_a_tile_has():
    gate = make_gate(4)
    x = make_input(2, 13, 11)
    logits = gate(x)
    weight, bias = gate.conv.weight.view(-1), gate.conv.bias
    for i, j in [(0, 0), (1, 2), (3, 0), (3, 2)]:  # (3, *) and (*, 2) are partial tiles
        patch = x[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
        want = patch.mean(dim=(2, 3)) @ weight + bias
        torch.testing.assert_close(logits[:, i, j], want)


def test_per_position_gate_is_a_1x1_conv_and_starts_at_its_bias():
    torch.manual_seed(0)
    gate = SpatialMaskGate(CHANS, dtype=DT)  # defaults: tile 1, 1x1, bias 3
    x = make_input(2, 6, 7)
    logits = gate(x)
    torch.testing.assert_close(logits, torch.einsum("bchw,c->bhw", x, gate.conv.weight.view(-1)) + 3.0)
    assert (logits - 3.0).abs().max() < 0.2  # small initial weights: ~sigmoid(3) of positions run


@pytest.mark.parametrize("kwargs,match", [
    ({"tile": 0}, "tile must be an int >= 1, got 0"),
    ({"tile": 2.0}, "tile must be an int >= 1, got 2.0"),
    ({"kernel_size": 2}, "kernel_size must be an odd int >= 1, got 2"),
    ({"kernel_size": 0}, "kernel_size must be an odd int >= 1, got 0"),
])
def test_bad_gate_arguments_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=f"SpatialMaskGate: {match}"):
        SpatialMaskGate(CHANS, **kwargs)


# ------------------------------------------------------------------ decisions


def test_training_decisions_are_straight_through():
    logits = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0), dtype=DT, requires_grad=True)
    decisions = spatial_decisions(logits, training=True, generator=torch.Generator().manual_seed(1))
    assert decisions.shape == logits.shape and decisions.dtype == DT
    assert set(decisions.unique().tolist()) == {0.0, 1.0}  # exactly hard forward, both values seen
    weights = torch.randn(decisions.shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    (decisions * weights).sum().backward()
    assert logits.grad is not None and bool((logits.grad != 0).all())  # relaxed gradient everywhere


def test_training_decisions_are_reproducible_and_follow_the_logits():
    logits = torch.tensor([[[30.0, -30.0], [30.0, -30.0]]], dtype=DT)
    draws = [spatial_decisions(logits, training=True, tau=0.5, generator=torch.Generator().manual_seed(s))
             for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1])
    for d in draws:  # noise beyond +-30 has probability ~1e-13
        assert d.tolist() == [[[1.0, 0.0], [1.0, 0.0]]]
    noisy = torch.zeros(1, 64, 64, dtype=DT)
    a = spatial_decisions(noisy, training=True, generator=torch.Generator().manual_seed(0))
    b = spatial_decisions(noisy, training=True, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)  # the training decisions are samples
    assert 0.4 < a.mean().item() < 0.6  # 4096 fair coins: off by > 0.1 with probability ~1e-37


def test_inference_decisions_threshold_the_logits_deterministically():
    logits = torch.tensor([[[-1.0, 0.0], [0.5, 2.0]]], dtype=DT)
    default = spatial_decisions(logits, training=False)
    assert default.dtype == torch.bool
    assert default.tolist() == [[[False, False], [True, True]]]
    assert spatial_decisions(logits, training=False, generator=torch.Generator().manual_seed(3)).tolist() == \
        default.tolist()  # no noise at inference
    assert spatial_decisions(logits, training=False, threshold=1.0).tolist() == [[[False, False], [False, True]]]
    assert spatial_decisions(logits, training=False, threshold=-math.inf).all()
    assert not spatial_decisions(logits, training=False, threshold=math.inf).any()


def test_expand_tiles():
    decisions = torch.tensor([[[1, 0], [0, 1]], [[0, 1], [1, 1]]], dtype=torch.bool)
    grown = expand_tiles(decisions, 3, 5, 4)  # 6x6 cropped to 5x4
    assert grown.shape == (2, 5, 4) and grown.dtype == torch.bool
    for b in range(2):
        for r in range(5):
            for c in range(4):
                assert grown[b, r, c] == decisions[b, r // 3, c // 3]
    assert expand_tiles(decisions, 1, 2, 2) is decisions
    exact = expand_tiles(decisions.to(DT), 2, 4, 4)  # straight-through floats keep their dtype
    assert exact.dtype == DT and exact.sum().item() == 4 * decisions.sum().item()
    logits = torch.randn(2, 2, 2, dtype=DT, requires_grad=True)
    expand_tiles(logits, 2, 3, 3).sum().backward()  # gradients pass through the expansion
    assert logits.grad.tolist() == [[[4.0, 2.0], [2.0, 1.0]]] * 2


# ------------------------------------------------------------------ FLOPs budget


def test_block_bounds_anneal_from_the_budget_to_the_unit_interval():
    assert block_bounds(0.4, 0.0) == pytest.approx((0.4, 0.4))
    assert block_bounds(0.4, -1.0) == pytest.approx((0.4, 0.4))
    assert block_bounds(0.4, 1 / 6) == pytest.approx((0.2, 0.7))  # cos^2(pi/4) = 1/2
    for progress in (1 / 3, 0.5, 1.0, 2.0):
        assert block_bounds(0.4, progress) == pytest.approx((0.0, 1.0), abs=1e-12)
    lower, upper = zip(*(block_bounds(0.4, p / 30) for p in range(11)))
    assert list(lower) == sorted(lower, reverse=True) and list(upper) == sorted(upper)


# executed (B=2, L=2) and full (L,): mean executed [3, 4], network fraction 7/12, block
# fractions [3/8, 1]; with theta 1/2 the network term is (7/12 - 1/2)^2 = 1/144
EXECUTED = [[2.0, 6.0], [4.0, 2.0]]
FULL = [8.0, 4.0]


@pytest.mark.parametrize("progress,block_term", [
    (None, 0.0),
    (0.0, (1 / 64 + 1 / 4) / 2),  # bounds [1/2, 1/2]: (1/2 - 3/8)^2 and (1 - 1/2)^2
    (1 / 6, (0 + 1 / 16) / 2),    # bounds [1/4, 3/4]: 3/8 inside, 1 above by 1/4
    (1 / 3, 0.0),                 # bounds [0, 1]
    (1.0, 0.0),
])
def test_flops_budget_loss_on_a_hand_computed_example(progress, block_term):
    executed = torch.tensor(EXECUTED, dtype=DT, requires_grad=True)
    loss = flops_budget_loss(executed, torch.tensor(FULL, dtype=DT), 0.5, progress)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(1 / 144 + block_term, abs=1e-12)
    loss.backward()
    if block_term == 0.0:  # network term only: 2 (7/12 - 1/2) / (B * sum f) = 1/144 for every entry
        torch.testing.assert_close(executed.grad, torch.full((2, 2), 1 / 144, dtype=DT))
    else:  # the block term pushes block 1 (above its upper bound) down, block 0 up or not at all
        assert bool((executed.grad[:, 0] <= 1 / 144 + 1e-15).all()) and bool((executed.grad[:, 1] > 1 / 144).all())


def test_flops_budget_loss_is_zero_at_the_budget():
    executed = torch.tensor([[4.0, 2.0], [4.0, 2.0]], dtype=DT)
    assert flops_budget_loss(executed, torch.tensor(FULL, dtype=DT), 0.5, 0.0).item() == 0.0


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, math.nan, math.inf, "x", None])
def test_check_budget_refuses_values_outside_the_unit_interval(bad):
    with pytest.raises(ConfigError, match=r"model 'm': the FLOPs budget .* must be in \(0, 1\], got"):
        check_budget(bad, "model 'm'")


def test_check_budget_accepts_the_unit_interval():
    assert check_budget(1) == 1.0 and isinstance(check_budget(1), float)
    assert check_budget(0.25) == 0.25


def test_zero_noise_scale_trains_on_the_inference_rule():
    logits = torch.randn(3, 5, 6, requires_grad=True)
    decided = spatial_decisions(logits, training=True, noise_scale=0.0)
    assert torch.equal(decided.detach() > 0.5, logits.detach() > 0)
    decided.sum().backward()
    assert logits.grad.abs().sum() > 0


def test_noise_scale_changes_how_often_decisions_flip():
    logits = torch.full((1, 64, 64), 1.0)
    g = torch.Generator().manual_seed(0)
    full = spatial_decisions(logits, training=True, noise_scale=1.0, generator=g).mean()
    g = torch.Generator().manual_seed(0)
    small = spatial_decisions(logits, training=True, noise_scale=0.2, generator=g).mean()
    assert 0.6 < full < 0.85  # sigmoid(1) = 0.73 of the positions on
    assert small > 0.99       # logit 1 beats noise scaled to 0.2 almost always


@pytest.mark.parametrize("bad", [{"tile": True}, {"kernel_size": True}])
def test_booleans_are_not_sizes(bad):
    with pytest.raises(ConfigError):
        SpatialMaskGate(8, **bad)
