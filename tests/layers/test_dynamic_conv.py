"""DY-Conv: softmax attention over K kernels with a temperature given per call."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets.errors import ConfigError
from dynamicnets.gates.schedules import LinearDecay
from dynamicnets.layers.dynamic_conv import DynamicConv2d
from dynamicnets.flops import counted_flops


def make(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    args = dict(in_channels=8, out_channels=6, kernel_size=3, num_experts=4)
    args.update(kw)
    return DynamicConv2d(**args, dtype=dtype)


def test_attention_is_softmax_over_kernels_with_hidden_layer():
    layer = make()
    assert layer.routing.activation == "softmax"
    assert layer.routing.hidden[0].out_features == max(8 // 4, 4)
    x = torch.randn(3, 8, 6, 6)
    attention = layer.routing(x)
    assert attention.shape == (3, 4)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(3))


def test_temperature_is_a_forward_argument_from_a_schedule():
    layer = make()
    x = torch.randn(3, 8, 6, 6)
    schedule = LinearDecay(30.0, 1.0, total_steps=10)
    soft = layer.routing(x, temperature=schedule(0))
    sharp = layer.routing(x, temperature=schedule(10))
    assert layer.routing.temperature == 1.0  # module default untouched
    # A higher temperature flattens the attention towards uniform.
    assert (soft.max(dim=1).values < sharp.max(dim=1).values).all()
    logits = layer.routing.logits(x)
    torch.testing.assert_close(soft, (logits / 30.0).softmax(dim=1))
    y_soft = layer(x, temperature=30.0)
    torch.testing.assert_close(y_soft, layer.conv(x, soft))
    with pytest.raises(ConfigError, match="temperature"):
        layer(x, temperature=-1.0)


@pytest.mark.parametrize(
    "kw", [{}, {"stride": 2, "groups": 2, "bias": True}, {"groups": 8, "out_channels": 8}]
)
def test_batched_equals_per_sample_loop(kw):
    layer = make(**kw)
    x = torch.randn(5, 8, 9, 9)
    batched = layer(x, temperature=5.0)
    looped = torch.cat([layer(x[b : b + 1], temperature=5.0) for b in range(5)])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
    # and equals the K-convolution mixture of experts with the same attention
    moe = layer.conv.mixture_of_experts_reference(x, layer.routing(x, 5.0))
    torch.testing.assert_close(batched, moe, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_cost_equals_flop_counter(batch):
    layer = make(stride=2)
    x = torch.randn(batch, 8, 10, 10)
    assert counted_flops(layer, x) == batch * layer.flops(10, 10)
    hidden = layer.routing.hidden[0].out_features
    expected = 2 * (8 * hidden + hidden * 4) + 2 * 4 * 6 * 8 * 9 + 2 * 6 * 8 * 9 * 5 * 5
    assert layer.flops(10, 10) == expected


def test_gradcheck_double():
    layer = make(dtype=torch.float64, in_channels=4, out_channels=3, num_experts=2, min_hidden=2)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x, temperature=3.0), (x,))
    # gradients reach every parameter, the attention included
    layer(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="reduction"):
        make(reduction=0)
    with pytest.raises(ConfigError, match="num_experts"):
        make(num_experts=0)


@pytest.mark.parametrize("grad", [False, True])
def test_channels_last_input_same_output_same_layout(grad):
    layer = make()
    x = torch.randn(6, 8, 7, 7)
    expected = layer(x, temperature=2.0)
    with torch.set_grad_enabled(grad):
        out = layer(x.contiguous(memory_format=torch.channels_last), temperature=2.0)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
