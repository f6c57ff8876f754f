"""Density caps of spatially sparse models (`GatePolicy(max_density=...)`): with every
position switched on (DynConv) or never halting (SACT), no gated block runs more than the
cap's share of a sample's positions, the highest-scoring ones; the capped compact FLOPs
are what `FlopCounterMode` counts; masked and compact agree."""
import math

import pytest
import torch
from torch import nn

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops
from dynamicnets.gates.spatial import cap_density, density_limit
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.models.skipping.act import HaltingState

DT = torch.float64
SIZE = 16


def randomised(name: str, **kwargs) -> nn.Module:
    """A float64 model with non-trivial BN statistics and gate/halting weights that spread."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, dtype=DT, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g, dtype=DT))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g, dtype=DT))
        for gate in getattr(model, "gates", []):
            gate.conv.weight.copy_(torch.randn(gate.conv.weight.shape, generator=g, dtype=DT))
    return model.eval()


def inputs(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2), dtype=DT)


def test_cap_density_keeps_the_highest_scoring_active_cells():
    scores = torch.tensor([[[0.1, 0.9], [0.5, 0.7]], [[3.0, 2.0], [1.0, 0.0]]])
    decided = torch.tensor([[[True, False], [True, True]], [[True, True], [True, True]]])
    assert cap_density(scores, decided, 0.5).tolist() == [[[False, False], [True, True]], [[True, True], [False, False]]]
    assert cap_density(scores, decided, 0.3).tolist() == [[[False, False], [False, True]], [[True, False], [False, False]]]
    assert not cap_density(scores, decided, 0.2).any()  # floor(0.2 * 4) = 0 cells
    assert torch.equal(cap_density(scores, decided, 1.0), decided) and cap_density(scores, decided, None) is decided
    assert density_limit(0.29, 100) == 29 and density_limit(0.7, 10) == 7 and density_limit(1.0, 5) == 5


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kwargs", [{}, {"gate_tile": 4}], ids=["positions", "tiles"])
def test_dynconv_every_position_on_runs_at_most_the_cap(kwargs, batch):
    model = randomised("dynconv_resnet20", **kwargs)
    blocks, cap = model.num_gated_blocks, 0.3
    policy = GatePolicy.constant(-math.inf, blocks, max_density=cap)
    x = inputs(batch)
    with torch.no_grad():
        full = model(x, policy=GatePolicy.constant(-math.inf, blocks))
        compact = model(x, policy=policy)
        masked = model(x, policy=policy, execution="masked")
    masks = [compact.decisions[f"spatial_mask.{i}"] for i in range(blocks)]
    tile = kwargs.get("gate_tile", 1)
    for mask in masks:
        cells = math.ceil(mask.shape[1] / tile) * math.ceil(mask.shape[2] / tile)
        active = mask[:, ::tile, ::tile].flatten(1).sum(1)  # one position per decision cell
        assert (active == density_limit(cap, cells)).all()
    assert (full.decisions["density"] == 1).all() and (compact.decisions["density"] <= cap).all()
    assert (compact.flops < full.flops).all()
    assert int(compact.flops.sum()) == counted_flops(lambda: model(x, policy=policy))
    for i, mask in enumerate(masks):
        assert torch.equal(masked.decisions[f"spatial_mask.{i}"], mask)
    torch.testing.assert_close(masked.logits, compact.logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(masked.decisions["compact_flops"], compact.flops)
    with torch.no_grad():  # the capped masks given as decisions: the same network
        given = model(x, masks=masks, execution="masked")
    torch.testing.assert_close(given.logits, compact.logits, rtol=1e-9, atol=1e-9)


def test_dynconv_cap_keeps_the_gate_own_choice_when_it_fits():
    model = randomised("dynconv_resnet20")
    blocks = model.num_gated_blocks
    x = inputs(3)
    with torch.no_grad():
        free = model(x)
        loose = model(x, policy=GatePolicy.constant(0.0, blocks, max_density=1.0))
        tight = model(x, policy=GatePolicy.constant(0.0, blocks, max_density=0.2))
    assert torch.equal(free.logits, loose.logits)
    # the first gated block sees the same input either way: the cap keeps a subset of the
    # gate's own positions, all of them where they fit
    mine, capped = free.decisions["spatial_mask.0"], tight.decisions["spatial_mask.0"]
    assert not (capped & ~mine).any()
    limit = density_limit(0.2, mine[0].numel())
    fits = mine.flatten(1).sum(1) <= limit
    assert torch.equal(capped[fits], mine[fits])
    assert (capped.flatten(1).sum(1) == torch.clamp(mine.flatten(1).sum(1), max=limit)).all()
    assert (tight.decisions["density"] <= 0.2).all() and (free.decisions["density"] > 0.2).any()


def test_dynconv_cap_errors_name_the_key():
    model = randomised("dynconv_resnet20")
    blocks, x = model.num_gated_blocks, inputs(1)
    with torch.no_grad():
        masks = [m for k, m in model(x).decisions.items() if k.startswith("spatial_mask.")]
    with pytest.raises(ConfigError, match="key 'max_density'.*masks given"):
        model(x, masks=masks, policy=GatePolicy.constant(0.0, blocks, max_density=0.5))
    with pytest.raises(ConfigError, match="key 'max_flops': this model does not honour"):
        model(x, policy=GatePolicy.constant(0.0, blocks, max_flops=1e9))


def test_sact_never_halting_runs_at_most_the_cap():
    model = randomised("sact_resnet20", width=8)
    cap = 0.25
    never = GatePolicy.constant(math.inf, 3)
    policy = GatePolicy.constant(math.inf, 3, max_density=cap)
    x = inputs(3)
    with torch.no_grad():
        full = model(x, policy=never)
        compact = model(x, policy=policy)
        masked = model(x, policy=policy, execution="masked")
    assert (full.decisions["density"] == 1).all()
    assert (compact.decisions["density"] <= cap).all() and (compact.flops < full.flops).all()
    assert int(compact.flops.sum()) == counted_flops(lambda: model(x, policy=policy))
    torch.testing.assert_close(masked.logits, compact.logits, rtol=1e-9, atol=1e-9)
    for key in ("ponder", "density", "compact_flops"):
        torch.testing.assert_close(masked.decisions[key], compact.decisions[key], rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        loose = model(x, policy=GatePolicy.constant(0.9, 3, max_density=1.0))
        plain = model(x, policy=GatePolicy.constant(0.9, 3))
    torch.testing.assert_close(loose.logits, plain.logits, rtol=0, atol=0)


def test_a_forced_halt_gives_the_last_block_the_remainder():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(2, 3, generator=g, dtype=DT) * 0.3 for _ in range(3)]
    state = HaltingState(scores[0], 0.01)
    weights = [state.step(None, scores[0])]
    stop = torch.tensor([[True, False, False], [False, True, False]])
    extra = state.halt(stop, scores[0])
    weights[0] = weights[0] + extra
    for h in (scores[1], None):
        weights.append(state.step(None, h))
    torch.testing.assert_close(sum(weights), torch.ones(2, 3, dtype=DT))
    # halted after block 1: N = 1, R = 1 (nothing before it); the others ran all three blocks
    assert torch.equal(state.count, torch.where(stop, 1.0, 3.0).to(DT))
    torch.testing.assert_close(state.remainder[stop], torch.ones(2, dtype=DT))
    torch.testing.assert_close(state.remainder[~stop], (1 - scores[0] - scores[1])[~stop])
