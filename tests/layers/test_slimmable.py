"""Slimmable conv/linear layers, their eval cache, and the slimmable/switchable norms."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dynamicnets import ConfigError
from dynamicnets.execution import Execution
from dynamicnets.layers.slimmable import (
    SlimmableConv2d,
    SlimmableLinear,
    build_slice_cache,
    channels_at,
    clear_slice_cache,
    set_execution,
)
from dynamicnets.layers.switchable_norm import (
    SlimmableBatchNorm2d,
    SwitchableBatchNorm2d,
    calibrate_batchnorm,
)
from dynamicnets.flops import counted_flops


class OpRecorder(TorchDispatchMode):
    """Names of the aten ops a block of code dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def pad_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    return F.pad(x, (0, 0) * (x.ndim - 2) + (0, channels - x.shape[1]))


@pytest.fixture
def conv() -> SlimmableConv2d:
    torch.manual_seed(0)
    return SlimmableConv2d(8, 12, 3, stride=2, padding=1, bias=True)


def test_channels_at_rounds_and_clamps():
    assert channels_at(64, 0.25) == 16
    assert channels_at(3, 0.5) == 2  # halves round up
    assert channels_at(3, 0.01) == 1
    assert channels_at(10, 1.0) == 10


def test_sliced_weight_is_a_view_of_the_parameter(conv):
    weight, bias = conv.sliced_parameters(6, 4)
    assert weight.shape == (6, 4, 3, 3) and bias.shape == (6,)
    assert weight._base is conv.weight and bias._base is conv.bias
    assert weight.data_ptr() == conv.weight.data_ptr()
    assert not weight.is_contiguous()  # a strided view, not a compacted copy


@pytest.mark.parametrize("training", [True, False])
def test_slice_forward_copies_no_weight(conv, training):
    conv.train(training)
    x = torch.randn(2, 4, 9, 9)
    with OpRecorder() as rec, torch.no_grad():
        y = conv(x, 0.5)
    assert y.shape == (2, 6, 5, 5)
    assert set(rec.ops) == {"slice", "convolution"}


def test_index_execution_gathers_with_index_select(conv):
    set_execution(conv, "indexed")
    x = torch.randn(2, 4, 9, 9)
    with OpRecorder() as rec, torch.no_grad():
        conv(x, 0.5)
    assert rec.ops.count("index_select") == 3 and "slice" not in rec.ops


def test_full_width_uses_the_parameters_themselves(conv):
    weight, bias = conv.sliced_parameters(12, 8)
    assert weight is conv.weight and bias is conv.bias
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, 2, 1))


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75, 1.0])
def test_conv_masked_equals_sliced_equals_indexed(conv, width):
    c_in = channels_at(8, width)
    c_out = channels_at(12, width)
    x = torch.randn(3, c_in, 9, 9)
    sliced = conv(x, width)
    set_execution(conv, "masked")
    masked = conv(pad_channels(x, 8), width)
    set_execution(conv, "indexed")
    indexed = conv(x, width)
    assert sliced.shape == (3, c_out, 5, 5) and masked.shape == (3, 12, 5, 5)
    torch.testing.assert_close(masked[:, :c_out], sliced, atol=1e-5, rtol=1e-5)
    assert (masked[:, c_out:] == 0).all()
    torch.testing.assert_close(indexed, sliced)


def test_conv_gradient_reaches_only_the_slice(conv):
    conv(torch.randn(2, 4, 9, 9), 0.5).square().sum().backward()
    grad = conv.weight.grad
    assert grad.shape == conv.weight.shape
    assert grad[:6, :4].abs().sum() > 0
    assert grad[6:].abs().sum() == 0 and grad[:, 4:].abs().sum() == 0
    assert conv.bias.grad[6:].abs().sum() == 0


def test_masked_and_sliced_gradients_agree(conv):
    x = torch.randn(2, 4, 9, 9)
    conv(x, 0.5).square().sum().backward()
    sliced_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    set_execution(conv, "masked")
    conv(pad_channels(x, 8), 0.5).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, sliced_grad, atol=1e-5, rtol=1e-5)


def test_conv_flops_equal_flop_counter(conv):
    for width in (0.25, 0.5, 1.0):
        x = torch.randn(1, channels_at(8, width), 9, 9)
        flops, shape = conv.flops_and_shape((x.shape[1], 9, 9), width)
        assert flops == counted_flops(conv, x, width)
        assert shape == tuple(conv(x, width).shape[1:])
    set_execution(conv, "masked")
    assert conv.flops_and_shape((2, 9, 9), 0.25)[0] == counted_flops(conv, torch.randn(1, 8, 9, 9), 0.25)


def test_depthwise_conv_slices_channels():
    torch.manual_seed(0)
    dw = SlimmableConv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(2, 4, 6, 6)
    expected = F.conv2d(x, dw.weight[:4], None, 1, 1, 1, 4)
    torch.testing.assert_close(dw(x), expected)
    assert dw.flops_and_shape((4, 6, 6), 0.5)[0] == counted_flops(dw, x[:1])
    set_execution(dw, "masked")
    masked = dw(pad_channels(x, 8), 0.5)
    torch.testing.assert_close(masked[:, :4], expected)
    assert (masked[:, 4:] == 0).all()


def test_stem_refuses_a_narrower_input_and_bad_groups():
    stem = SlimmableConv2d(3, 16, 3, slim_in=False)
    with pytest.raises(ConfigError, match="exactly 3"):
        stem(torch.randn(1, 2, 8, 8))
    with pytest.raises(ConfigError, match="at most 8"):
        SlimmableConv2d(8, 8, 1)(torch.randn(1, 9, 4, 4))
    with pytest.raises(ConfigError, match="groups"):
        SlimmableConv2d(8, 16, 3, groups=4)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        SlimmableConv2d(8, 8, 1)(torch.randn(1, 8, 4, 4), 1.5)
    with pytest.raises(ConfigError, match="execution"):
        set_execution(stem, "gather")


def test_linear_masked_equals_sliced_and_classifier_keeps_outputs():
    torch.manual_seed(0)
    fc = SlimmableLinear(16, 10)
    x = torch.randn(5, 8)
    sliced = fc(x, 0.5)
    torch.testing.assert_close(sliced, F.linear(x, fc.weight[:5, :8], fc.bias[:5]))
    assert fc.sliced_parameters(5, 8)[0]._base is fc.weight
    set_execution(fc, "masked")
    masked = fc(pad_channels(x, 16), 0.5)
    torch.testing.assert_close(masked[:, :5], sliced)
    assert (masked[:, 5:] == 0).all()
    head = SlimmableLinear(16, 10, slim_out=False)
    assert head(x, 0.25).shape == (5, 10)
    assert head.flops(8) == counted_flops(head, x[:1])


def test_eval_cache_holds_contiguous_copies_and_is_used_in_eval_only(conv):
    x = torch.randn(2, 4, 9, 9)
    expected = conv(x, 0.5)
    conv.eval()
    build_slice_cache(conv, [0.5])
    assert conv.cached_widths() == [(6, 4)]
    weight, _ = conv.sliced_parameters(6, 4)
    assert weight.is_contiguous() and weight.data_ptr() != conv.weight.data_ptr()
    torch.testing.assert_close(conv(x, 0.5), expected)
    conv.train()
    assert conv.cached_widths() == []  # train() drops the cache
    conv.eval()
    build_slice_cache(conv, [0.5])
    conv.training = True  # even with a cache present, training never reads it
    assert conv.sliced_parameters(6, 4)[0]._base is conv.weight


def test_eval_cache_goes_stale_when_weights_change(conv):
    conv.eval()
    build_slice_cache(conv, [0.5])
    with torch.no_grad():
        conv.weight.mul_(2.0)  # an optimizer step or load_state_dict does the same
    weight, _ = conv.sliced_parameters(6, 4)
    assert weight._base is conv.weight  # stale entry ignored: back to the view
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(conv(x, 0.5), F.conv2d(x, conv.weight[:6, :4], conv.bias[:6], 2, 1))
    conv.load_state_dict({k: v.clone() for k, v in conv.state_dict().items()})
    assert conv.sliced_parameters(6, 4)[0]._base is conv.weight
    build_slice_cache(conv, [0.5])
    conv.double()
    assert conv.cached_widths() == []  # .to()/.double() drop it
    build_slice_cache(conv, [0.5])
    clear_slice_cache(conv)
    assert conv.cached_widths() == []


def test_switchable_batchnorm_picks_the_norm_of_the_width():
    torch.manual_seed(0)
    norm = SwitchableBatchNorm2d(8, [1.0, 0.5, 0.25])
    assert norm.widths == (0.25, 0.5, 1.0)
    assert [bn.num_features for bn in norm.bns] == [2, 4, 8]
    for bn in norm.bns:
        nn.init.uniform_(bn.weight)
        nn.init.uniform_(bn.bias)
    x = torch.randn(6, 4, 3, 3)
    y = norm(x, 0.5)
    bn = norm.bns[1]
    torch.testing.assert_close(y, F.batch_norm(x, None, None, bn.weight, bn.bias, True))
    assert norm.bns[1].num_batches_tracked == 1
    assert norm.bns[0].num_batches_tracked == 0 and norm.bns[2].num_batches_tracked == 0
    assert norm.norm_at(None) is norm.bns[2]
    with pytest.raises(ConfigError, match="0.75 is not configured"):
        norm(torch.randn(2, 6, 3, 3), 0.75)
    with pytest.raises(ConfigError, match="2 channels"):
        norm(x, 0.25)
    with pytest.raises(ConfigError, match="include 1.0"):
        SwitchableBatchNorm2d(8, [0.5])
    norm.execution = Execution.MASKED
    masked = norm(pad_channels(x, 8), 0.5)
    assert masked.shape == (6, 8, 3, 3) and (masked[:, 4:] == 0).all()


def test_slimmable_batchnorm_updates_only_the_active_statistics():
    norm = SlimmableBatchNorm2d(8)
    x = torch.randn(16, 3, 4, 4) + 5.0
    norm(x)
    mean = x.mean(dim=(0, 2, 3))
    torch.testing.assert_close(norm.running_mean[:3], 0.1 * mean)
    assert (norm.running_mean[3:] == 0).all() and (norm.running_var[3:] == 1).all()
    norm.eval()
    torch.testing.assert_close(
        norm(x),
        F.batch_norm(x, norm.running_mean[:3], norm.running_var[:3], norm.weight[:3], norm.bias[:3]),
    )
    norm.execution = Execution.INDEXED
    torch.testing.assert_close(norm(x), F.batch_norm(x, norm.running_mean[:3], norm.running_var[:3]))
    with pytest.raises(ConfigError, match="at most 8"):
        norm(torch.randn(2, 9, 2, 2))


class TinySlimNet(nn.Module):
    """conv -> sliced BN, `forward(x, width)`; enough to check calibration."""

    def __init__(self, switchable: bool) -> None:
        super().__init__()
        self.conv = SlimmableConv2d(3, 8, 1, bias=False, slim_in=False)
        self.norm = SwitchableBatchNorm2d(8, [0.5, 1.0]) if switchable else SlimmableBatchNorm2d(8)

    def forward(self, x, width=None):
        return self.norm(self.conv(x, width), width)


@pytest.mark.parametrize("switchable", [True, False])
def test_calibrate_batchnorm_gives_the_exact_average_over_batches(switchable):
    torch.manual_seed(0)
    net = TinySlimNet(switchable).eval()
    batches = [torch.randn(4, 3, 5, 5) + i for i in range(3)]
    seen = calibrate_batchnorm(net, batches, width=0.5)
    assert seen == 12 and not net.training and not net.norm.training
    with torch.no_grad():
        feats = [net.conv(b, 0.5) for b in batches]
    expected_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    bn = net.norm.norm_at(0.5) if switchable else net.norm
    torch.testing.assert_close(bn.running_mean[:4], expected_mean)
    assert bn.momentum == 0.1  # restored
    if switchable:
        assert net.norm.norm_at(1.0).num_batches_tracked == 0  # other widths untouched
    with pytest.raises(ConfigError, match="empty"):
        calibrate_batchnorm(net, [], width=0.5)


def test_eval_cache_keeps_a_channels_last_layout(conv):
    conv = conv.to(memory_format=torch.channels_last).eval()
    build_slice_cache(conv, [0.5])
    weight, _ = conv.sliced_parameters(6, 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv(x, 0.5), F.conv2d(x, conv.weight[:6, :4], conv.bias[:6], 2, 1))
