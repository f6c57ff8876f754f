"""CondConv2d, its routing function and the batched per-sample convolution."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets.errors import ConfigError
from dynamicnets.layers.cond_conv import CondConv2d, RoutedCondConv2d, per_sample_conv2d
from dynamicnets.gates.routing import RoutingFunction
from dynamicnets.flops import counted_flops

CONFIGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=1, groups=1, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, groups=2, bias=True),
    dict(in_channels=6, out_channels=6, kernel_size=3, stride=1, groups=6, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=1, stride=1, groups=1, bias=True),
]


def make(config, num_experts=3, dtype=torch.float32):
    torch.manual_seed(0)
    return CondConv2d(**config, num_experts=num_experts, dtype=dtype)


@pytest.mark.parametrize("config", CONFIGS)
def test_batched_equals_per_sample_loop(config):
    conv = make(config)
    x = torch.randn(5, config["in_channels"], 9, 7)
    r = torch.rand(5, 3)
    batched = conv(x, r)
    looped = torch.cat([conv(x[b : b + 1], r[b : b + 1]) for b in range(5)])
    assert batched.shape == looped.shape
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
def test_each_sample_uses_its_own_mixed_kernel(config):
    conv = make(config)
    x = torch.randn(3, config["in_channels"], 8, 8)
    r = torch.rand(3, 3)
    out = conv(x, r)
    for b in range(3):
        kernel = sum(r[b, k] * conv.weight[k] for k in range(3))
        bias = None if conv.bias is None else sum(r[b, k] * conv.bias[k] for k in range(3))
        expected = F.conv2d(x[b : b + 1], kernel, bias, conv.stride, conv.padding, 1, conv.groups)
        torch.testing.assert_close(out[b : b + 1], expected, rtol=1e-5, atol=1e-5)


def test_one_hot_routing_is_the_chosen_expert():
    conv = make(CONFIGS[1])
    x = torch.randn(2, 4, 8, 8)
    r = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = conv(x, r)
    for b, k in enumerate((1, 2)):
        expected = F.conv2d(x[b : b + 1], conv.weight[k], conv.bias[k], 2, 1, 1, 2)
        torch.testing.assert_close(out[b : b + 1], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS)
def test_equals_mixture_of_experts_at_fewer_flops(config):
    conv = make(config, num_experts=4)
    x = torch.randn(3, config["in_channels"], 8, 8)
    r = torch.rand(3, 4)
    torch.testing.assert_close(
        conv(x, r), conv.mixture_of_experts_reference(x, r), rtol=1e-5, atol=1e-5
    )
    cond_flops = counted_flops(conv, x, r)
    moe_flops = counted_flops(conv.mixture_of_experts_reference, x, r)
    assert moe_flops == 4 * 3 * conv.conv_flops(8, 8)
    assert cond_flops == 3 * conv.flops(8, 8) < moe_flops


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("batch", [1, 4])
def test_cost_equals_flop_counter(config, batch):
    conv = make(config, num_experts=4)
    x = torch.randn(batch, config["in_channels"], 11, 10)
    r = torch.rand(batch, 4)
    assert counted_flops(conv, x, r) == batch * conv.flops(11, 10)
    assert conv.aggregation_flops() == 2 * 4 * conv.expert_params()


def test_gradcheck_double():
    conv = make(CONFIGS[1], num_experts=2, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    r = torch.rand(2, 2, dtype=torch.float64, requires_grad=True)
    inputs = (x, r, conv.weight, conv.bias)
    assert torch.autograd.gradcheck(lambda x, r, w, b: _call(conv, x, r, w, b), inputs)


def _call(conv, x, r, weight, bias):
    kernels = (r @ weight.view(2, -1)).view(x.shape[0], *weight.shape[1:])
    return per_sample_conv2d(x, kernels, r @ bias, conv.stride, conv.padding, 1, conv.groups)


def test_gradcheck_through_module():
    conv = make(CONFIGS[0], num_experts=2, dtype=torch.float64)
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    r = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x, r))


def test_bad_routing_raises_config_error():
    conv = make(CONFIGS[0])
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(ConfigError, match="routing_weights"):
        conv(x, torch.rand(2, 5))
    with pytest.raises(ConfigError, match="rows"):
        conv(x, torch.rand(3, 3))
    with pytest.raises(ConfigError, match="expected x"):
        conv(torch.randn(2, 5, 6, 6), torch.rand(2, 3))
    with pytest.raises(ConfigError, match="divisible by groups"):
        CondConv2d(4, 6, 3, groups=4)


def test_routing_function_activations_and_temperature():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5)
    sig = RoutingFunction(8, 3, "sigmoid")
    r = sig(x)
    assert r.shape == (4, 3) and ((r > 0) & (r < 1)).all()
    soft = RoutingFunction(8, 3, "softmax", temperature=2.0, hidden_channels=4)
    r = soft(x)
    torch.testing.assert_close(r.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(r, (soft.logits(x) / 2.0).softmax(dim=1))
    hot = soft(x, temperature=1e4)
    torch.testing.assert_close(hot, torch.full_like(hot, 1 / 3), atol=1e-3, rtol=0)
    assert soft.temperature == 2.0  # the forward argument did not change the default
    with pytest.raises(ConfigError, match="temperature"):
        soft(x, temperature=0.0)
    with pytest.raises(ConfigError, match="activation"):
        RoutingFunction(8, 3, "relu")


@pytest.mark.parametrize("hidden", [None, 5])
def test_routing_cost_equals_flop_counter(hidden):
    routing = RoutingFunction(8, 4, hidden_channels=hidden)
    x = torch.randn(3, 8, 6, 6)
    assert counted_flops(routing, x) == 3 * routing.flops()


def test_routed_cond_conv_bundle():
    torch.manual_seed(0)
    layer = RoutedCondConv2d(4, 6, 3, stride=2, num_experts=4)
    x = torch.randn(3, 4, 9, 9)
    y, r = layer.forward_with_routing(x)
    assert y.shape == (3, 6, 5, 5) and r.shape == (3, 4)
    torch.testing.assert_close(y, layer.conv(x, layer.routing(x)))
    torch.testing.assert_close(layer(x), y)
    assert counted_flops(layer, x) == 3 * layer.flops(9, 9)
    assert layer.output_size(9, 9) == (5, 5)
    looped = torch.cat([layer(x[b : b + 1]) for b in range(3)])
    torch.testing.assert_close(y, looped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_channels_last_input(batch):
    conv = make(CONFIGS[1])
    x = torch.randn(batch, 4, 8, 8)
    r = torch.rand(batch, 3)
    out = conv(x.contiguous(memory_format=torch.channels_last), r)
    torch.testing.assert_close(out, conv(x, r), rtol=1e-5, atol=1e-5)


def _loop_reference(x, kernels, bias, stride, padding, groups):
    return torch.cat(
        [
            F.conv2d(
                x[b : b + 1], kernels[b], None if bias is None else bias[b], stride, padding,
                1, groups,
            )
            for b in range(x.shape[0])
        ]
    )


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("batch", [2, 5])
@pytest.mark.parametrize("kernel_order", ["default", "channels_last"])
def test_per_sample_conv2d_channels_last_keeps_layout(grad, batch, kernel_order):
    # 256 channels: the inference fold runs in chunks of 2 samples (FOLDED_ROW_BYTES)
    torch.manual_seed(0)
    x = torch.randn(batch, 256, 5, 4).contiguous(memory_format=torch.channels_last)
    kernels = torch.randn(batch, 6, 128, 3, 3)
    if kernel_order == "channels_last":
        kernels = kernels.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    bias = torch.randn(batch, 6)
    expected = _loop_reference(x.contiguous(), kernels, bias, 2, 1, 2)
    x.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = per_sample_conv2d(x, kernels, bias, stride=2, padding=1, groups=2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    if grad:
        out.square().sum().backward()
        x_ref = x.detach().contiguous().requires_grad_()
        _loop_reference(x_ref, kernels, bias, 2, 1, 2).square().sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("batch", [1, 3])
def test_channels_last_kernels_keep_a_default_layout_output(batch):
    torch.manual_seed(0)
    x = torch.randn(batch, 4, 6, 6)
    kernels = torch.randn(batch, 5, 4, 3, 3).permute(0, 1, 3, 4, 2).contiguous()
    kernels = kernels.permute(0, 1, 4, 2, 3)  # channels_last order in memory
    out = per_sample_conv2d(x, kernels, padding=1)
    assert out.is_contiguous()
    torch.testing.assert_close(out, _loop_reference(x, kernels, None, 1, 1, 1))


@pytest.mark.parametrize("batch", [2, 6])  # fewer / more samples than the 3 experts
def test_channels_last_inference_mixes_in_channels_last(batch):
    conv = make(CONFIGS[1]).eval()
    x = torch.randn(batch, 4, 8, 8)
    r = torch.rand(batch, 3)
    kernels, _ = conv.aggregate(r, channels_last=True)
    torch.testing.assert_close(kernels, conv.aggregate(r)[0])
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = conv(x_cl, r)
        assert counted_flops(conv, x_cl, r) == batch * conv.flops(8, 8)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, conv(x, r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hidden", [None, 5])
def test_routing_logits_are_mean_pool_then_linear(hidden):
    torch.manual_seed(0)
    routing = RoutingFunction(8, 4, "softmax", temperature=3.0, hidden_channels=hidden)
    x = torch.randn(3, 8, 5, 6)
    d = x.mean(dim=(2, 3))
    if hidden is not None:
        d = F.relu(F.linear(d, routing.hidden[0].weight, routing.hidden[0].bias))
    logits = F.linear(d, routing.fc.weight, routing.fc.bias)
    torch.testing.assert_close(routing.logits(x), logits)
    torch.testing.assert_close(routing(x), (logits / 3.0).softmax(dim=1))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(routing(x_cl, temperature=0.5), (logits / 0.5).softmax(dim=1))
