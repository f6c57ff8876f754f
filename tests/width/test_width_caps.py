"""Compute caps of width-adaptive models (`WidthPolicy`): a gate pushed to the widest width
(DS-Net) or a request for it (slimmable networks) runs the widest width that fits the cap;
the capped FLOPs are what `FlopCounterMode` counts; masked and compact agree."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import dynamicnets as dn
from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops
from dynamicnets.inference import WidthPolicy, worst_case_flops

SHAPE = (3, 16, 16)


def dsnet():
    torch.manual_seed(0)
    model = create_model("dsnet_resnet_cifar", num_classes=5).eval()
    with torch.no_grad():
        model.gate.weight.normal_(0, 3.0)  # spread the choices over the widths
    return model


def inputs(batch: int = 8) -> torch.Tensor:
    offsets = torch.linspace(-4, 4, batch).view(batch, 1, 1, 1)
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0)) + offsets


def test_dsnet_gate_pushed_to_the_widest_width_runs_the_widest_that_fits():
    model = dsnet()
    with torch.no_grad():
        model.gate.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1e4]))  # every sample wants width 1.0
    costs = (model.width_costs(SHAPE) + model.gate_flops(SHAPE)).tolist()
    policy = WidthPolicy(max_flops=(costs[1] + costs[2]) / 2)  # 0.5 fits, 0.75 does not
    x = inputs()
    with torch.no_grad():
        uncapped = model(x)
        compact = model(x, policy=policy)
        masked = model(x, "masked", policy=policy)
    assert (uncapped.decisions["width"] == 1.0).all() and (uncapped.flops > policy.max_flops).all()
    assert (compact.decisions["width"] == 0.5).all() and compact.decisions["width_capped"].all()
    assert (compact.flops <= policy.max_flops).all()
    assert int(compact.flops.sum()) == counted_flops(lambda: model(x, policy=policy))
    assert torch.equal(masked.decisions["width"], compact.decisions["width"])
    torch.testing.assert_close(masked.logits, compact.logits, rtol=1e-5, atol=1e-5)
    assert worst_case_flops(model, SHAPE, policy) == costs[1]
    assert worst_case_flops(model, SHAPE) == costs[3]


def test_dsnet_choices_that_fit_are_kept():
    model = dsnet()
    x = inputs()
    costs = (model.width_costs(SHAPE) + model.gate_flops(SHAPE)).tolist()
    policy = WidthPolicy(max_flops=costs[2], max_width=0.75)
    with torch.no_grad():
        free = model(x)
        capped = model(x, policy=policy)
    wanted = free.decisions["width_index"]
    assert wanted.unique().numel() >= 2
    assert torch.equal(capped.decisions["width_index"], wanted.clamp(max=2))
    assert torch.equal(capped.decisions["width_capped"], wanted > 2)
    assert (capped.flops <= costs[2]).all() and "width_capped" not in free.decisions
    fits = wanted <= 2
    torch.testing.assert_close(capped.logits[fits], free.logits[fits])


@pytest.mark.parametrize("norm", ["switchable", "universal"])
def test_slimmable_resnet_request_is_clamped_to_the_widest_width_that_fits(norm):
    torch.manual_seed(0)
    model = create_model("slimmable_resnet_cifar", num_classes=5, norm=norm).eval()
    x = inputs(3)
    cost = {w: model.flops(SHAPE, w) for w in (0.5, 0.75, 0.9, 1.0)}
    policy = WidthPolicy(max_flops=(cost[0.5] + cost[0.75]) / 2)
    with torch.no_grad():
        out = model(x, 1.0, policy=policy)
        reference = model(x, 0.5)
    assert (out.decisions["width"] == 0.5).all() and (out.flops <= policy.max_flops).all()
    assert torch.equal(out.logits, reference.logits)
    assert int(out.flops.sum()) == counted_flops(lambda: model(x, 1.0, policy=policy))
    assert model.worst_case_flops(SHAPE, policy) == cost[0.5]
    if norm == "universal":  # an unconfigured width that fits is kept
        loose = WidthPolicy(max_flops=cost[0.9])
        with torch.no_grad():
            assert (model(x, 0.9, policy=loose).decisions["width"] == 0.9).all()
        assert model.worst_case_flops(SHAPE, WidthPolicy(max_width=0.9)) == cost[0.9]
    else:
        assert model.worst_case_flops(SHAPE, WidthPolicy(max_width=0.9)) == cost[0.75]
    with pytest.raises(ConfigError, match="caps a run at one width"):
        model(x, widths=[0.5, 1.0], policy=policy)


def test_user_slimmable_chain_is_capped_too():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    chain = dn.adapt.make_slimmable(net, input_shape=SHAPE, widths=(0.25, 0.5, 1.0)).eval()
    policy = WidthPolicy(max_flops=chain.flops(SHAPE, 0.5))
    x = inputs(2)
    with torch.no_grad():
        out = chain(x, 1.0, policy=policy)
    assert (out.decisions["width"] == 0.5).all() and (out.flops == policy.max_flops).all()
    assert int(out.flops.sum()) == counted_flops(lambda: chain(x, 1.0, policy=policy))
    assert worst_case_flops(chain, SHAPE, policy) == policy.max_flops


def test_out_of_range_width_caps_name_their_key():
    model = dsnet()
    for kwargs, key in [({"max_flops": 0}, "max_flops"), ({"max_flops": True}, "max_flops"),
                        ({"max_width": 0.0}, "max_width"), ({"max_width": 1.5}, "max_width")]:
        with pytest.raises(ConfigError, match=f"key '{key}'"):
            WidthPolicy(**kwargs)
    with pytest.raises(ConfigError, match="key 'max_flops'.*below the cheapest width"):
        model(inputs(1), policy=WidthPolicy(max_flops=1e3))
    with pytest.raises(ConfigError, match="key 'max_width'.*below the narrowest width"):
        model(inputs(1), policy=WidthPolicy(max_width=0.1))


def test_width_policy_round_trips_through_a_weights_only_checkpoint():
    policy = WidthPolicy(max_flops=3e7, max_width=0.75, meta={"why": "latency"})
    buffer = io.BytesIO()
    torch.save({"width_policy": policy.to_dict()}, buffer)
    buffer.seek(0)
    loaded = WidthPolicy.from_dict(torch.load(buffer, weights_only=True)["width_policy"])
    assert loaded == policy and loaded.meta == {"why": "latency"}
    with pytest.raises(ConfigError, match="ckpt: expected a saved width policy"):
        WidthPolicy.from_dict({"max_flops": 1}, source="ckpt")
