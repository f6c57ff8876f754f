"""MultiExitNetwork and the registered multi-exit models: output, costs, gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynamicnets import ConfigError, DynamicOutput, create_model
from dynamicnets.models.depth import ExitHead, MultiExitNetwork
from dynamicnets.flops import flops_and_shape, traced_flops_and_shape
from dynamicnets.models.depth.gradient_equilibrium import downstream_exit_counts, scale_gradient
from dynamicnets.flops import counted_flops

DEPTH_MODELS = {
    "multi_exit_cnn": {},
    "resnet_exits": {"exit_blocks": [0, 4, 6]},
    "cascade": {},
    "msdnet_cifar": {"num_blocks": 3, "base": 1, "step": 1, "head_channels": 16},
}


def _build(name: str, **extra) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=7, **{**DEPTH_MODELS[name], **extra})


@pytest.mark.parametrize("name", sorted(DEPTH_MODELS))
def test_forward_output_and_flops_equal_counter(name):
    model = _build(name).eval()
    x = torch.randn(3, *model.default_input_shape)
    out = model(x)
    assert isinstance(out, DynamicOutput)
    assert len(out.exit_logits) == model.num_exits >= 2
    assert all(t.shape == (3, 7) for t in out.exit_logits)
    assert out.logits is out.exit_logits[-1]
    assert out.flops.dtype == torch.float64 and out.flops.shape == (3,)
    assert torch.all(out.flops == counted_flops(model, x) / 3)


@pytest.mark.parametrize("name", sorted(DEPTH_MODELS))
def test_exit_costs_equal_counter_up_to_each_exit(name):
    model = _build(name).eval()
    shape = model.default_input_shape
    x = torch.randn(2, *shape)
    costs = model.exit_costs(shape)
    assert costs == sorted(costs) and costs[-1] == model.flops(shape)

    def run_to(k):
        state = None
        for j in range(k + 1):
            state = model.run_segment(j, state, x)
            model.exit_logits(j, state)

    for k, cost in enumerate(costs):
        assert counted_flops(run_to, k) == 2 * cost


@pytest.mark.parametrize("name", sorted(DEPTH_MODELS))
def test_every_parameter_gets_a_gradient_from_the_exit_losses(name):
    model = _build(name).train()
    x = torch.randn(4, *model.default_input_shape)
    y = torch.randint(0, 7, (4,))
    out = model(x)
    sum(F.cross_entropy(logits, y) for logits in out.exit_logits).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("weight"))


def test_documented_costs():
    assert create_model("multi_exit_cnn").exit_costs((1, 8, 8)) == [627_968, 1_808_896, 2_401_280]
    assert create_model("resnet_exits").exit_costs((3, 32, 32)) == [31_556_224, 60_131_200, 86_346_880]
    assert create_model("cascade").exit_costs((1, 8, 8)) == [157_312, 2_556_032]
    big = create_model("cascade", members=["resnet20", "resnet56"], member_args=None, in_chans=3, device="meta")
    assert big.exit_costs((3, 32, 32)) == [81_626_368, 333_122_048]
    # the last exit of a cascade costs every member; resnet_exits' last = resnet20 + 2 heads
    assert create_model("cascade").exit_costs((1, 8, 8))[-1] == (
        create_model("small_cnn", width=8).flops((1, 8, 8)) + create_model("small_cnn").flops((1, 8, 8))
    )


def test_cascade_members_restart_from_the_input():
    torch.manual_seed(0)
    model = create_model("cascade", members=["small_cnn", "small_cnn"], member_args=[{"width": 4}, {"width": 8}])
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    out = model(x)
    second = model.stages[1].model
    assert torch.equal(out.exit_logits[1], second(x).logits)


def test_a_cascade_stands_for_its_last_member_alone_a_backbone_for_its_full_pass():
    torch.manual_seed(0)
    model = create_model("cascade", members=["small_cnn", "small_cnn"], member_args=[{"width": 4}, {"width": 8}])
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    second = model.stages[1].model
    assert model.reference_flops((1, 8, 8)) == second.flops((1, 8, 8)) < model.flops((1, 8, 8))
    assert torch.equal(model.reference_forward(x), second(x).logits)
    assert counted_flops(model.reference_forward, x[:1]) == model.reference_flops((1, 8, 8))
    exits = create_model("multi_exit_cnn").eval()
    assert exits.reference_flops((1, 8, 8)) == exits.flops((1, 8, 8))
    assert torch.equal(exits.reference_forward(x), exits(x).logits)


def _trunk_and_heads(model):
    trunk = {n: p for n, p in model.named_parameters() if n.startswith("stages.")}
    heads = {n: p for n, p in model.named_parameters() if n.startswith("exits.")}
    return trunk, heads


def test_gradient_equilibrium_scales_trunk_gradients_by_downstream_exit_count():
    torch.manual_seed(0)
    plain = create_model("multi_exit_cnn", width=4).double().train()
    balanced = create_model("multi_exit_cnn", width=4, gradient_equilibrium=True).double().train()
    balanced.load_state_dict(plain.state_dict())
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    for model in (plain, balanced):
        out = model(x)
        sum(F.cross_entropy(logits, y) for logits in out.exit_logits).backward()
    assert torch.equal(plain(x).exit_logits[0], balanced(x).exit_logits[0])  # forward unchanged
    trunk_plain, heads_plain = _trunk_and_heads(plain)
    trunk_bal, heads_bal = _trunk_and_heads(balanced)
    downstream = {0: 3, 1: 2, 2: 1}  # exits at or after each stage
    for name, p in trunk_plain.items():
        n = downstream[int(name.split(".")[1])]
        torch.testing.assert_close(trunk_bal[name].grad * n, p.grad)
    for name, p in heads_plain.items():
        torch.testing.assert_close(heads_bal[name].grad, p.grad)
    # and it did change something: stage 0 gets a third of the summed gradient
    assert not torch.allclose(trunk_bal["stages.0.0.conv.weight"].grad, trunk_plain["stages.0.0.conv.weight"].grad)


def test_downstream_exit_counts_stop_at_restarts():
    assert downstream_exit_counts([0, 1, 2], set()) == [3, 2, 1]
    assert downstream_exit_counts([1, 3, 4], set()) == [3, 2, 1]
    assert downstream_exit_counts([0, 1, 2], {1, 2}) == [1, 1, 1]  # a cascade: nothing shared
    assert downstream_exit_counts([0, 2, 3], {2}) == [1, 2, 1]


def test_scale_gradient_is_identity_forward_and_scales_backward():
    x = torch.randn(4, requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((4,), 0.25))


def test_exits_after_chosen_stages():
    torch.manual_seed(0)
    stages = [nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 8, 3, padding=1)]
    exits = [ExitHead(4, 3), ExitHead(8, 3)]
    model = MultiExitNetwork(stages, exits, exit_after=[1, 2], gradient_equilibrium=True).eval()
    x = torch.randn(2, 1, 8, 8)
    out = model(x)
    assert len(out.exit_logits) == 2
    assert torch.all(out.flops == counted_flops(model, x) / 2)
    assert model.exit_costs((1, 8, 8))[0] == 2 * 4 * 9 * 64 + 2 * 4 * 4 * 9 * 16 + 2 * 4 * 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"exit_after": [0]}, "exit_after has 1"),
        ({"exit_after": [1, 0]}, "increasing"),
        ({"exit_after": [0, 1]}, "last exit must follow the last stage"),
        ({"restart_stages": [0]}, "restart_stages"),
    ],
)
def test_bad_structure_is_a_config_error(kwargs, match):
    stages = [nn.Identity(), nn.Identity(), nn.Identity()]
    exits = [nn.Identity(), nn.Identity()]
    if "restart_stages" in kwargs:
        kwargs = {**kwargs, "exit_after": [1, 2]}
    with pytest.raises(ConfigError, match=match):
        MultiExitNetwork(stages, exits, **kwargs)


def test_resnet_exits_bad_blocks():
    with pytest.raises(ConfigError, match="exit_blocks"):
        create_model("resnet_exits", exit_blocks=[9])


class _Doubler(nn.Module):
    """A stage with its own forward and no cost method: costs fall back to tracing."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x * 2)) + self.conv(x)


def test_cost_walker_analytic_and_traced_agree_with_the_counter():
    doubler = _Doubler().train()
    before = doubler.bn.running_mean.clone()
    flops, shape = flops_and_shape(doubler, (2, 9, 7))
    assert torch.equal(doubler.bn.running_mean, before)  # tracing touched nothing
    assert shape == (3, 5, 4) and flops == counted_flops(doubler.eval(), torch.randn(1, 2, 9, 7))
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.AvgPool2d(2), nn.AdaptiveAvgPool2d((2, 1)), nn.Flatten(), nn.Linear(16, 5),
    )
    analytic = flops_and_shape(seq, (3, 23, 17))
    traced = traced_flops_and_shape(seq, (3, 23, 17))
    assert analytic == traced
    assert analytic[0] == counted_flops(seq, torch.randn(1, 3, 23, 17))


def test_wrong_input_channels_is_a_config_error():
    with pytest.raises(ConfigError, match="input channels|does not fit"):
        create_model("multi_exit_cnn").exit_costs((3, 8, 8))
