"""WeightNet: kernels generated per sample by FC -> sigmoid -> grouped FC."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets.errors import ConfigError
from dynamicnets.layers.weightnet import WeightNetConv2d
from dynamicnets.flops import counted_flops

CONFIGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, groups=2, bias=True),
    dict(in_channels=6, out_channels=6, kernel_size=3, groups=6, fc_groups=1),
    dict(in_channels=4, out_channels=8, kernel_size=1, ratio=4, fc_groups=2),
]


def make(config, dtype=torch.float32):
    torch.manual_seed(0)
    return WeightNetConv2d(**config, dtype=dtype)


def reference_kernels(layer, descriptor):
    """Generation written out: output channel o's kernel comes from its own M values only."""
    m, g = layer.ratio, layer.fc_groups
    attention = torch.sigmoid(descriptor @ layer.fc.weight.T + layer.fc.bias)  # (B, M*O)
    per_kernel = layer.generator.out_channels // layer.out_channels
    w = layer.generator.weight.view(layer.out_channels, g, per_kernel // g, m // g)
    a = attention.view(-1, layer.out_channels, g, m // g)
    kernels = torch.einsum("ogpj,bogj->bogp", w, a)
    return kernels.reshape(descriptor.shape[0], *layer.kernel_shape())


@pytest.mark.parametrize("config", CONFIGS)
def test_generated_kernels_follow_the_grouped_fc(config):
    layer = make(config)
    d = torch.randn(3, config["in_channels"])
    torch.testing.assert_close(layer.generate(d), reference_kernels(layer, d), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS)
def test_batched_equals_per_sample_loop(config):
    layer = make(config)
    x = torch.randn(5, config["in_channels"], 9, 8)
    batched = layer(x)
    looped = torch.cat([layer(x[b : b + 1]) for b in range(5)])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
    kernels = layer.generate(x.mean(dim=(2, 3)))
    for b in range(5):
        expected = F.conv2d(
            x[b : b + 1], kernels[b], layer.bias, layer.stride, layer.padding, 1, layer.groups
        )
        torch.testing.assert_close(batched[b : b + 1], expected, rtol=1e-5, atol=1e-5)


def test_explicit_descriptor():
    torch.manual_seed(0)
    layer = WeightNetConv2d(4, 6, 3, descriptor_channels=5)
    x, d = torch.randn(2, 4, 6, 6), torch.randn(2, 5)
    y = layer(x, d)
    assert y.shape == (2, 6, 6, 6)
    assert counted_flops(layer, x, d) == 2 * layer.flops(6, 6)
    with pytest.raises(ConfigError, match="needs a descriptor"):
        layer(x)
    with pytest.raises(ConfigError, match="descriptor must be"):
        layer(x, torch.randn(2, 4))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("batch", [1, 3])
def test_cost_equals_flop_counter(config, batch):
    layer = make(config)
    x = torch.randn(batch, config["in_channels"], 10, 9)
    assert counted_flops(layer, x) == batch * layer.flops(10, 9)


def test_gradcheck_double():
    layer = make(dict(in_channels=2, out_channels=2, kernel_size=3, bias=True), dtype=torch.float64)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    params = (layer.fc.weight, layer.generator.weight)

    def fn(x, fc_weight, generator_weight):
        d = x.mean(dim=(2, 3))
        a = torch.sigmoid(F.linear(d, fc_weight, layer.fc.bias))
        k = F.conv2d(a[:, :, None, None], generator_weight, groups=layer.generator.groups)
        k = k.view(2, *layer.kernel_shape())
        return torch.cat([F.conv2d(x[b : b + 1], k[b], layer.bias, 1, 1) for b in range(2)])

    torch.testing.assert_close(fn(x, *params), layer(x))
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.autograd.gradcheck(fn, (x, *params))


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="divisible by fc_groups"):
        WeightNetConv2d(3, 6, 3, groups=3, fc_groups=2)  # 9 kernel values, G = 2
    with pytest.raises(ConfigError, match="ratio"):
        WeightNetConv2d(4, 6, 3, ratio=0)
    with pytest.raises(ConfigError, match="expected x"):
        make(CONFIGS[0])(torch.randn(2, 3, 5, 5))


@pytest.mark.parametrize("config", CONFIGS[:2])
def test_channels_last_input(config):
    layer = make(config)
    x = torch.randn(4, config["in_channels"], 8, 7)
    with torch.no_grad():
        expected = layer(x)
        out = layer(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
