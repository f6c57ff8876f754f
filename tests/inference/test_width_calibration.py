"""`calibrate_width_policy`: a DS-Net gate's bias fitted to a mean-FLOPs budget."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError, create_model
from dynamicnets.inference import WidthPolicy, calibrate_width_policy

SHAPE = (3, 16, 16)


def gated(narrow_bias: float = 0.0):
    torch.manual_seed(0)
    model = create_model("dsnet_resnet_cifar", num_classes=3, gate_grid=2).eval()
    with torch.no_grad():
        model.gate.weight.normal_(0, 1.0)
        model.gate.bias.zero_()
        model.gate.bias[0] = narrow_bias
    return model


def data(n: int = 48) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1)) * 2


def costs(model) -> torch.Tensor:
    return model.width_costs(SHAPE) + model.gate_flops(SHAPE)


@pytest.mark.parametrize("narrow_bias", [0.0, 30.0])
@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_the_fitted_policy_spends_at_most_the_budget_and_its_forward_agrees(narrow_bias, fraction):
    model = gated(narrow_bias)
    x = data()
    budget = fraction * float(costs(model)[-1])
    policy = calibrate_width_policy(model, x, budget)
    with torch.no_grad():
        out = model(x, policy=policy)
    assert float(out.flops.mean()) <= budget
    assert float(out.flops.mean()) == pytest.approx(policy.meta["mean_flops"])
    assert policy.meta["samples"] == 48 and len(policy.bias) == 4
    # the same samples one at a time (gate scores off by float rounding) decide the same
    with torch.no_grad():
        alone = torch.cat([model(x[i : i + 1], policy=policy).decisions["width_index"] for i in range(48)])
    assert torch.equal(alone, out.decisions["width_index"])


def test_a_frugal_gate_is_pushed_to_spend_the_budget():
    model = gated(narrow_bias=30.0)  # every sample to the narrowest width
    x = data()
    with torch.no_grad():
        assert model(x).decisions["width_index"].max() == 0
    policy = calibrate_width_policy(model, x, 0.5 * float(costs(model)[-1]))
    assert policy.meta["lam"] < 0
    with torch.no_grad():
        assert model(x, policy=policy).decisions["width_index"].max() > 0


def test_a_cap_stays_in_the_fitted_policy():
    model = gated()
    x = data()
    policy = calibrate_width_policy(model, x, float(costs(model)[-1]), max_width=0.5)
    assert policy.max_width == 0.5
    with torch.no_grad():
        assert float(model(x, policy=policy).decisions["width"].max()) <= 0.5


def test_the_bias_survives_a_round_trip_and_is_checked():
    policy = WidthPolicy(max_flops=1e6, bias=(0.0, -0.5, -1.0, -2.0), meta={"lam": 2.0})
    again = WidthPolicy.from_dict(policy.to_dict())
    assert again == policy and again.meta == {"lam": 2.0}
    assert WidthPolicy.from_dict({"kind": "width_cap", "max_flops": None, "max_width": 0.5}).bias is None
    with pytest.raises(ConfigError, match="bias"):
        WidthPolicy(bias=(float("nan"),))
    with pytest.raises(ConfigError, match="'bias' has 2 entries"):
        gated()(data(4), policy=WidthPolicy(bias=(0.0, 1.0)))


def test_bad_calibration_inputs_raise_config_errors():
    model = gated()
    with pytest.raises(ConfigError, match="below the narrowest"):
        calibrate_width_policy(model, data(8), 1.0)
    with pytest.raises(ConfigError, match="empty"):
        calibrate_width_policy(model, [], 1e9)
    with pytest.raises(ConfigError, match="no width gate"):
        calibrate_width_policy(create_model("slimmable_resnet_cifar", num_classes=3), data(8), 1e9)


@pytest.mark.parametrize("bias", [5, "ab", ["x"]])
def test_a_malformed_saved_bias_is_a_config_error(bias):
    with pytest.raises(ConfigError, match="bias"):
        WidthPolicy.from_dict({"kind": "width_cap", "max_flops": None, "max_width": None, "bias": bias})


def test_a_confidence_bounds_a_fresh_batch_instead_of_the_calibration_mean():
    model = gated()
    x = data(96)
    budget = 0.4 * float(costs(model)[-1])
    plain = calibrate_width_policy(model, x, budget)
    sure = calibrate_width_policy(model, x, budget, confidence=0.9, eval_size=64)
    assert sure.meta["spread"]["upper"] <= budget and sure.meta["spread"]["eval_size"] == 64
    assert plain.meta["spread"]["upper"] is None and plain.meta["spread"]["mean_std"] > 0
    assert sure.meta["mean_flops"] <= plain.meta["mean_flops"] <= budget
    with pytest.raises(ConfigError, match="confidence"):
        calibrate_width_policy(model, x, budget, confidence=1.5)
