"""Exits on a user's own backbone: costs measured once per shape, invisible to an outer counter."""
import pytest
import torch
from torch import nn

import dynamicnets as dn
from dynamicnets.errors import ConfigError
from dynamicnets.models.depth import multi_exit

from adapt_helpers import counted, make_resnet


def with_exits(model):
    stages = [nn.Sequential(model.stem, model.layer1), model.layer2]
    return dn.adapt.add_exits(stages, num_classes=10, input_shape=(3, 16, 16), head=model.head)


def test_heads_are_sized_from_the_stages():
    net = with_exits(make_resnet())
    assert net.num_exits == 2 and net.exit_after == (0, 1)
    assert net.exits[0][-1].in_features == 8  # layer1 output channels
    out = net(torch.randn(3, 3, 16, 16))
    assert [t.shape for t in out.exit_logits] == [(3, 10), (3, 10)]


def test_outer_counter_sees_exactly_the_forward():
    model = make_resnet()
    net = with_exits(model)
    x = torch.randn(2, 3, 16, 16)
    out, seen = counted(net, x)  # first call: the costs are measured inside
    plain = nn.Sequential(model.stem, model.layer1, model.layer2, model.head)
    _, plain_flops = counted(plain, x)
    _, exit_flops = counted(net.exits[0], model.layer1(model.stem(x)))
    assert seen == plain_flops + exit_flops
    assert out.flops.tolist() == [seen / 2] * 2
    assert torch.allclose(out.logits, model(x))


def test_costs_are_measured_once_per_shape(monkeypatch):
    calls = []
    real = multi_exit.flops_and_shape

    def spy(module, shape):
        calls.append(shape)
        return real(module, shape)

    monkeypatch.setattr(multi_exit, "flops_and_shape", spy)
    net = with_exits(make_resnet())
    net(torch.randn(2, 3, 16, 16))
    first = len(calls)
    assert first > 0
    net(torch.randn(4, 3, 16, 16))  # same per-sample shape, another batch size
    net.exit_costs((3, 16, 16))
    assert len(calls) == first
    net(torch.randn(1, 3, 8, 8))  # a new shape is measured once
    assert len(calls) == 2 * first
    assert net.flops((3, 8, 8)) < net.flops((3, 16, 16))


def test_bad_exit_after_and_stages_are_refused():
    model = make_resnet()
    with pytest.raises(ConfigError, match="exit_after"):
        dn.adapt.add_exits([model.stem, model.layer1], num_classes=10, input_shape=(3, 8, 8), exit_after=[1])
    with pytest.raises(ConfigError, match="stage 1"):
        dn.adapt.add_exits([model.stem, model.layer2[1]], num_classes=10, input_shape=(3, 8, 8))


def test_a_policy_in_the_call_runs_the_real_early_exits():
    model = make_resnet()
    multi = dn.adapt.add_exits([model.stem, model.layer1, model.layer2], head=model.head, num_classes=10,
                               input_shape=(3, 16, 16)).eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        confidence = multi(x).exit_logits[0].softmax(1).amax(1)
    policy = dn.inference.ExitPolicy(thresholds=[float(confidence.median()), float("inf")])
    with torch.no_grad():
        out = multi(x, policy)
        expected = dn.inference.run(multi, x, policy)
    assert torch.equal(out.decisions["exit_index"], expected.exit_index)
    assert torch.equal(out.logits, expected.logits) and torch.equal(out.flops, expected.flops)
    assert 0 < int((out.decisions["exit_index"] == 0).sum()) < 6  # the rule splits the batch
    with pytest.raises(ConfigError, match="eval"):
        multi.train()(x, policy)
