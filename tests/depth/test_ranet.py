"""RANet: exit shapes and resolutions, documented costs, costs against the counter,
compact early exits against the run-everything reference, configurations, errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops
from dynamicnets.inference import ExitPolicy, run_all_then_select, run_early_exit
from dynamicnets.models.depth.ranet import RANet
from dynamicnets.protocols import MultiExit

# a small RANet with every kind of block: 3 sub-networks, fusion blocks that halve the
# resolution, transitions, 2 layers per block, 4 exits
SMALL = {"channels": 4, "growth_rate": 4, "num_blocks": 2, "block_step": 1, "step": 2, "head_channels": 8}


def test_exits_read_the_coarsest_scale_and_sub_networks_run_coarse_to_fine():
    model = create_model("ranet_cifar", device="meta").eval()
    assert isinstance(model, MultiExit) and model.num_exits == 6
    x = torch.empty(3, 3, 32, 32, device="meta")
    state, running = None, []
    for k in range(model.num_exits):
        state = model.run_segment(k, state, x)
        assert model.exit_logits(k, state).shape == (3, 10)
        assert state[0].shape[2:] == (8, 8)  # every exit reads 8x8 features
        running.append([tuple(t.shape[2:]) for t in state[1:]])
    # the base features of the sub-networks still to run wait in the state, finest last
    assert running[0][:2] == running[1][:2] == [(16, 16), (32, 32)]
    assert running[2][0] == running[3][0] == (32, 32)
    assert running[4] == running[5] == []  # the last sub-network passes nothing on
    out = model(torch.empty(3, 3, 32, 32, device="meta"))
    assert [tuple(t.shape) for t in out.exit_logits] == [(3, 10)] * 6


@pytest.mark.parametrize(
    "shape, documented",
    [
        ((3, 32, 32), [13_681_920, 25_283_072, 34_995_456, 38_449_664, 45_562_496, 47_185_792]),
        ((1, 28, 28), [10_576_896, 20_219_648, 28_079_352, 31_251_320, 36_986_822, 38_571_238]),
    ],
)
def test_documented_ranet_cifar_costs_and_parameters(shape, documented, costs_by_counter):
    # meta tensors: FlopCounterMode counts from shapes alone, nothing is computed
    model = create_model("ranet_cifar", in_chans=shape[0], device="meta").eval()
    assert sum(p.numel() for p in model.parameters()) == 754_288 - (3 - shape[0]) * 16 * 9
    assert model.exit_costs(shape) == documented
    assert costs_by_counter(model, torch.empty(2, *shape, device="meta")) == documented


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({}, (3, 32, 32)),  # 8x8, 16x16, 32x32
        ({"scales": (1, 2, 3, 3), "growth_factors": (4, 2, 1, 1), "bottleneck_factors": (4, 2, 1, 1)}, (3, 32, 32)),
        ({"step_mode": "linear", "step": 1, "compression": 1.0}, (1, 28, 28)),  # odd sizes: 28, 14, 7
        ({"scales": (1, 1, 2), "stem": "imagenet"}, (3, 64, 64)),
        ({"scales": (1,), "growth_factors": (1,), "bottleneck_factors": (1,)}, (1, 8, 8)),
    ],
)
def test_configurations_learn_everywhere_and_count_exactly_at_batch_3(kwargs, shape, costs_by_counter):
    torch.manual_seed(0)
    model = RANet(num_classes=5, in_chans=shape[0], **{**SMALL, **kwargs}).train()
    x = torch.randn(3, *shape)
    out = model(x)
    assert [t.shape for t in out.exit_logits] == [(3, 5)] * model.num_exits
    sum(t.logsumexp(1).mean() for t in out.exit_logits).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    costs = model.exit_costs(shape)
    assert costs_by_counter(model, x) == costs
    assert counted_flops(model, x) == 3 * costs[-1]
    assert torch.equal(model(x).flops, torch.full((3,), float(costs[-1]), dtype=torch.float64))


def _model() -> nn.Module:
    """A random small RANet whose logits are spread out (so the exits disagree)."""
    torch.manual_seed(0)
    model = RANet(**SMALL)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(30.0)
    return model.eval()


def _thresholds(model, x, fraction: float) -> list[float]:
    """Max-prob thresholds that let about `fraction` of the batch leave at each exit."""
    with torch.no_grad():
        scores = [logits.softmax(1).amax(1) for logits in model(x).exit_logits[:-1]]
    return [float(torch.quantile(s, 1.0 - fraction)) for s in scores]


def _check(model, x, policy):
    compact = run_early_exit(model, x, policy)
    reference = run_all_then_select(model, x, policy)
    assert torch.equal(compact.exit_index, reference.exit_index)
    assert torch.equal(compact.predictions, reference.predictions)
    assert torch.equal(compact.flops, reference.flops)
    torch.testing.assert_close(compact.logits, reference.logits, rtol=1e-4, atol=1e-4)
    assert counted_flops(run_early_exit, model, x, policy) == compact.flops.sum().item()
    return compact


@pytest.mark.parametrize("batch", [1, 2, 40])
def test_compact_early_exit_equals_running_every_exit(batch):
    model = _model()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    thresholds = _thresholds(model, torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(9)), 0.3)
    compact = _check(model, x, ExitPolicy("maxprob", thresholds))
    if batch == 40:
        histogram = compact.exit_histogram(model.num_exits)
        assert histogram[0] > 0 and histogram[-1] > 0 and sum(h > 0 for h in histogram) >= 3
        assert compact.mean_flops() < model.exit_costs((3, 32, 32))[-1]


@pytest.mark.parametrize("batch", [1, 7])
def test_everyone_at_the_first_exit_or_nobody_before_the_last(batch):
    model = _model()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    costs = model.exit_costs((3, 32, 32))
    first = _check(model, x, ExitPolicy("maxprob", [0.0] * (model.num_exits - 1)))
    assert first.exit_index.tolist() == [0] * batch and first.flops.tolist() == [costs[0]] * batch
    last = _check(model, x, ExitPolicy("maxprob", [float("inf")] * (model.num_exits - 1)))
    assert last.exit_index.tolist() == [model.num_exits - 1] * batch
    assert last.flops.tolist() == [costs[-1]] * batch
    capped = _check(model, x, ExitPolicy("maxprob", [float("inf")] * (model.num_exits - 1), max_flops=costs[1]))
    assert capped.exit_index.tolist() == [1] * batch


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scales": ()}, "scales"),
        ({"scales": (2, 3)}, "scales"),
        ({"scales": (1, 3)}, "scales"),
        ({"scales": (1, 2, 1)}, "scales"),
        ({"scales": "123"}, "scales"),
        ({"growth_factors": (4, 2)}, "growth_factors"),
        ({"bottleneck_factors": (4, 2, 0)}, "bottleneck_factors"),
        ({"fusion_ratio": 1.0}, "fusion_ratio"),
        ({"growth_rate": 2}, "growth_rate"),  # 2 * 1 * 0.25 leaves the low path no channel
        ({"compression": 0.0}, "compression"),
        ({"step_mode": "odd"}, "step_mode"),
        ({"stem": "tiny"}, "stem"),
        ({"num_blocks": 0}, "num_blocks"),
    ],
)
def test_bad_configuration_is_a_config_error_naming_the_argument(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RANet(**kwargs)
