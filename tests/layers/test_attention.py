"""Squeeze-and-excitation and CBAM attention against their formulas."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets.errors import ConfigError
from dynamicnets.layers.attention import CBAM, ChannelAttention, SpatialAttention, SqueezeExcite
from dynamicnets.flops import counted_flops


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(3, 16, 7, 5)


def mlp(layer, v):
    return layer.fc2(torch.relu(layer.fc1(v)))


def test_squeeze_excite_formula(x):
    se = SqueezeExcite(16, reduction=4)
    assert se.fc1.out_features == 4
    expected = torch.sigmoid(mlp(se, x.mean(dim=(2, 3))))[:, :, None, None]
    torch.testing.assert_close(se.attention(x), expected)
    torch.testing.assert_close(se(x), x * expected)


def test_channel_attention_formula(x):
    ca = ChannelAttention(16, reduction=4)
    expected = torch.sigmoid(mlp(ca, x.mean(dim=(2, 3))) + mlp(ca, x.amax(dim=(2, 3))))
    torch.testing.assert_close(ca.attention(x), expected[:, :, None, None])
    torch.testing.assert_close(ca(x), x * expected[:, :, None, None])


def test_spatial_attention_formula(x):
    sa = SpatialAttention(7)
    maps = torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1)
    expected = torch.sigmoid(F.conv2d(maps, sa.conv.weight, sa.conv.bias, padding=3))
    torch.testing.assert_close(sa.attention(x), expected)
    assert sa(x).shape == x.shape


def test_cbam_is_channel_then_spatial(x):
    cbam = CBAM(16, reduction=4, kernel_size=3)
    torch.testing.assert_close(cbam(x), cbam.spatial(cbam.channel(x)))
    assert (cbam.channel.attention(x) > 0).all() and (cbam.channel.attention(x) < 1).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: SqueezeExcite(16),
        lambda: ChannelAttention(16, 4),
        lambda: SpatialAttention(5),
        lambda: CBAM(16, 4),
    ],
    ids=["se", "channel", "spatial", "cbam"],
)
def test_cost_equals_flop_counter(x, make):
    layer = make()
    assert counted_flops(layer, x) == 3 * layer.flops(7, 5)


def test_gradcheck_double():
    torch.manual_seed(0)
    cbam = CBAM(4, reduction=2, kernel_size=3, min_hidden=2, dtype=torch.float64)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cbam, (x,))
    se = SqueezeExcite(4, reduction=2, dtype=torch.float64)
    assert torch.autograd.gradcheck(se, (x,))


def test_bad_arguments_raise_config_error(x):
    with pytest.raises(ConfigError, match="kernel_size"):
        SpatialAttention(4)
    with pytest.raises(ConfigError, match="reduction"):
        SqueezeExcite(16, reduction=0)
    with pytest.raises(ConfigError, match="expected input"):
        SqueezeExcite(8)(x)
