"""swap_convs: every nn.Conv2d argument form, outputs, training, FLOPs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamicnets as dn
from dynamicnets.errors import ConfigError
from dynamicnets.layers import CondConv2d
from dynamicnets.flops import flops_and_shape

from adapt_helpers import counted, make_resnet

FORMS = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1)),
    dict(kernel_size=(1, 3), padding=(0, 1), bias=True),
    dict(kernel_size=3, stride=(2, 1), padding=(1, 0), dilation=(2, 1)),
    dict(kernel_size=5, stride=2, padding=2, dilation=1),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=(3, 5), padding="valid", bias=True),
    dict(kernel_size=3, padding=1, groups=2),
    dict(kernel_size=3, padding=1, groups=4, out_channels=4),  # depthwise
    dict(kernel_size=1),
]


def make_conv(form):
    form = dict(form)
    out = form.pop("out_channels", 6)
    form.setdefault("bias", False)
    return nn.Conv2d(4, out, **form)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_every_argument_form(form):
    torch.manual_seed(0)
    conv = make_conv(form)
    x = torch.randn(3, 4, 11, 10)
    expected = conv(x)
    # DY-Conv with copied experts: attention sums to one, so it is the original conv
    dy = dn.adapt.swap_convs(nn.Sequential(make_conv(form)), "dyconv")[0]
    dy.conv.weight.data.copy_(conv.weight.detach().expand_as(dy.conv.weight))
    if conv.bias is not None:
        dy.conv.bias.data.copy_(conv.bias.detach().expand_as(dy.conv.bias))
    torch.testing.assert_close(dy(x), expected, rtol=1e-4, atol=1e-5)
    # CondConv with fresh experts: the mixture-of-experts reference, same output size
    cond = dn.adapt.swap_convs(nn.Sequential(conv), "condconv", num_experts=3, init="fresh")[0]
    r = cond.routing(x)
    y = cond.conv(x, r)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, cond.conv.mixture_of_experts_reference(x, r), rtol=1e-4, atol=1e-5)
    # per-sample cost: the layer's own figure is what FlopCounterMode counts
    _, total = counted(cond, x)
    assert cond.flops(11, 10) * 3 == total == flops_and_shape(cond, (4, 11, 10))[0] * 3


def test_cond_conv_takes_pairs():
    layer = CondConv2d(4, 6, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1))
    assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == (3, 2, 1, 1)
    layer = CondConv2d(4, 6, kernel_size=(1, 3))
    assert layer.weight.shape == (4, 6, 4, 1, 3) and layer.padding == (0, 1)
    with pytest.raises(ConfigError, match="kernel_size"):
        CondConv2d(4, 6, kernel_size=(3, 0))


def test_swapped_resnet_keeps_its_output_and_trains():
    model = make_resnet()
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
    dn.adapt.swap_convs(model, "dyconv", num_experts=3, filter=lambda path, conv: conv.kernel_size == (3, 3))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "DynamicConv2d" in kinds and "Conv2d" in kinds  # 1x1 shortcuts left alone
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    model.train()
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    _, total = counted(model, x)
    assert flops_and_shape(model, (3, 12, 12))[0] * 4 == total


def test_unswappable_convs_are_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")))
    with pytest.raises(ConfigError, match=r"conv '1\.0' has padding_mode='reflect'"):
        dn.adapt.swap_convs(model)
    with pytest.raises(ConfigError, match="asymmetric"):
        dn.adapt.swap_convs(nn.Sequential(nn.Conv2d(3, 4, 2, padding="same")))
    with pytest.raises(ConfigError, match="kind"):
        dn.adapt.swap_convs(model, "weightnet")
