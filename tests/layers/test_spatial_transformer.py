"""SpatialTransformer: identity start, exact glimpses for a known transform, gradients to the
localisation network, FLOPs against FlopCounterMode, clear errors."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynamicnets import ConfigError
from dynamicnets.flops import counted_flops
from dynamicnets.layers.spatial_transformer import SpatialTransformer

DT = torch.float64


def make(**kwargs) -> SpatialTransformer:
    torch.manual_seed(0)
    args = {"in_chans": 2, "input_size": 32, "output_size": 16} | kwargs
    return SpatialTransformer(**args, dtype=DT)


@pytest.mark.parametrize("attention", [False, True])
def test_identity_at_init_returns_the_input_resized(attention):
    x = torch.randn(3, 2, 32, 32, dtype=DT)
    glimpse = make(attention=attention).eval()(x)
    assert glimpse.shape == (3, 2, 16, 16)
    torch.testing.assert_close(glimpse, F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False))
    same = make(output_size=32, attention=attention).eval()(x)
    torch.testing.assert_close(same, x)


def test_transform_at_init_is_the_identity():
    theta = make(output_size=(8, 12)).eval().transform(torch.randn(4, 2, 32, 32, dtype=DT))
    torch.testing.assert_close(theta, torch.eye(2, 3, dtype=DT).expand(4, 2, 3))


def test_a_scale_and_translation_samples_that_crop_exactly():
    """Scale 1/2, shift (1/2, 1/2): output pixel i reads input pixel 16 + i, the bottom-right quadrant."""
    stn = make()
    x = torch.randn(2, 2, 32, 32, dtype=DT)
    theta = torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.5, 0.5]], dtype=DT).expand(2, 2, 3)
    torch.testing.assert_close(stn(x, theta), x[..., 16:, 16:])


@pytest.mark.parametrize("attention", [False, True])
def test_gradient_reaches_the_localisation_network(attention):
    stn = make(attention=attention).train()
    x = torch.randn(4, 2, 32, 32, dtype=DT)
    stn(x).square().sum().backward()
    # the regressor starts at zero weight: it gets the gradient; the layers below see it zero
    assert stn.regressor.weight.grad.abs().sum() > 0
    stn.zero_grad()
    with torch.no_grad():
        stn.regressor.weight.normal_(0, 0.1)
    stn(x).square().sum().backward()
    for name, p in stn.localisation.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_flops_equal_flop_counter_for_the_default_and_a_user_localisation():
    x = torch.randn(3, 2, 32, 32, dtype=DT)
    for stn in (make(), make(localisation=nn.Sequential(
            nn.Conv2d(2, 4, 5, stride=4, dtype=DT), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 10, dtype=DT)))):
        stn.eval()
        flops, shape = stn.flops_and_shape((2, 32, 32))
        assert shape == (2, 16, 16)
        assert 3 * flops == counted_flops(stn, x)
        parts = stn.cost_breakdown((2, 32, 32))
        assert flops == parts["localisation"] + parts["regressor"]
        assert parts["regressor"] == 2 * stn.regressor.in_features * 6
        # grid (2x3 matrix per position) + 4 bilinear taps per output value, not counted by FlopCounterMode
        assert parts["sampling"] == 12 * 256 + 8 * 2 * 256


def test_default_localisation_cost_by_hand():
    """Pool 32 -> 20, convs 2->8 (20x20), 8->16 s2 (10x10), 16->16 s2 (5x5), linear 400->32."""
    expected = 2 * 8 * 18 * 400 + 2 * 16 * 72 * 100 + 2 * 16 * 144 * 25 + 2 * 400 * 32
    assert make().cost_breakdown((2, 32, 32))["localisation"] == expected


@pytest.mark.parametrize("kwargs, key", [
    ({"output_size": 33}, "output_size"),
    ({"output_size": (16, 40)}, "output_size"),
    ({"output_size": 0}, "output_size"),
    ({"output_size": -3}, "output_size"),
    ({"input_size": (32, 0)}, "input_size"),
    ({"in_chans": 0}, "in_chans"),
    ({"loc_width": 0}, "loc_width"),
    ({"localisation": nn.Conv2d(2, 4, 3)}, "localisation"),
])
def test_bad_arguments_name_the_argument(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        make(**kwargs)


def test_an_input_smaller_than_the_glimpse_is_refused():
    with pytest.raises(ConfigError, match="output_size"):
        make().eval()(torch.randn(1, 2, 12, 12, dtype=DT))


@pytest.mark.parametrize("shape", [(2, 6), (3, 2, 3), (2, 3, 3)])
def test_a_given_theta_of_the_wrong_shape_is_refused(shape):
    with pytest.raises(ConfigError, match=re.escape(f"(B, 2, 3) = (2, 2, 3), got {shape}")):
        make().eval()(torch.randn(2, 2, 32, 32, dtype=DT), torch.zeros(shape, dtype=DT))


def test_learns_to_crop_the_object():
    """A Gaussian blob centred in the bottom-right quadrant of every input; the target is the 8x8
    crop around it. The loss falls as the localisation learns the scale and shift (attention)."""
    torch.manual_seed(0)
    stn = SpatialTransformer(1, 32, 8, attention=True).train()
    i = torch.arange(32.0)
    blob = torch.exp(-((i[:, None] - 23.5) ** 2 + (i[None] - 23.5) ** 2) / 32)
    x = blob + 0.05 * torch.randn(16, 1, 32, 32)
    target = x[..., 20:28, 20:28]
    optimiser = torch.optim.Adam(stn.parameters(), lr=0.01)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = F.mse_loss(stn(x), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
