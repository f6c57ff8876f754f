"""MSDNet: the documented costs, multi-scale structure, input sizes, configuration errors."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError, create_model
from dynamicnets.models.depth import MSDNet
from dynamicnets.models.depth.msdnet import _first_scales
from dynamicnets.flops import counted_flops


@pytest.mark.parametrize(
    "shape, in_chans, documented",
    [
        ((3, 32, 32), 3, [15_545_600, 27_404_800, 37_795_584, 46_326_784, 53_388_032]),
        ((1, 28, 28), 1, [12_003_776, 21_602_176, 30_059_040, 37_083_520, 42_978_248]),
    ],
)
def test_documented_msdnet_cifar_costs(shape, in_chans, documented, costs_by_counter):
    # meta tensors: FlopCounterMode counts from shapes alone, nothing is computed
    model = create_model("msdnet_cifar", in_chans=in_chans, device="meta").eval()
    assert sum(p.numel() for p in model.parameters()) == 680_830 - (3 - in_chans) * 16 * 9
    assert model.exit_costs(shape) == documented
    assert costs_by_counter(model, torch.empty(1, *shape, device="meta")) == documented


def test_scales_are_dropped_late_and_heads_read_the_coarsest():
    model = create_model("msdnet_cifar", device="meta").eval()
    x = torch.empty(2, 3, 32, 32, device="meta")
    state, seen = None, []
    for k in range(model.num_exits):
        state = model.run_segment(k, state, x)
        seen.append([tuple(t.shape[2:]) for t in state])
        assert model.exit_logits(k, state).shape == (2, 10)
    assert seen[0] == [(32, 32), (16, 16), (8, 8)]
    assert seen[-1] == [(8, 8)]
    assert [len(s) for s in seen] == sorted((len(s) for s in seen), reverse=True)


def test_first_scales_grow_one_at_a_time():
    assert _first_scales(10, 3, prune=True) == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    # only what a later layer or the coarsest-scale exits read is computed
    assert _first_scales(2, 4, prune=True) == [0, 2, 3]
    assert _first_scales(5, 3, prune=False) == [0, 0, 0, 0, 1, 2]


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"in_chans": 1, "num_blocks": 3, "head_channels": 16}, (1, 8, 8)),  # sklearn digits
        ({"num_scales": 4, "growth_factors": (1, 2, 4, 4), "bottleneck_factors": (1, 2, 4, 4), "stem": "imagenet",
          "num_blocks": 2, "base": 1, "step": 1, "head_channels": 8}, (3, 64, 64)),
        ({"step_mode": "linear", "num_blocks": 3, "base": 1, "step": 1, "compression": 1.0,
          "bottleneck_factors": None, "prune": False}, (3, 16, 16)),
    ],
)
def test_configurations_run_and_count_exactly(kwargs, shape):
    torch.manual_seed(0)
    model = MSDNet(num_classes=5, **kwargs).train()
    x = torch.randn(2, *shape)
    out = model(x)
    assert [t.shape for t in out.exit_logits] == [(2, 5)] * model.num_exits
    sum(t.logsumexp(1).mean() for t in out.exit_logits).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert counted_flops(model, x) == x.shape[0] * model.exit_costs(shape)[-1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"growth_factors": (1, 2)}, "num_scales"),
        ({"compression": 0.0}, "compression"),
        ({"stem": "tiny"}, "stem"),
        ({"step_mode": "odd"}, "step_mode"),
        ({"num_blocks": 0}, "num_blocks"),
        ({"growth_rate": 1, "growth_factors": (1, 1, 1)}, "growth_rate"),
    ],
)
def test_bad_configuration_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MSDNet(**kwargs)
