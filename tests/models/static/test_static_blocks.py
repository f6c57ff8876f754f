"""`ConvNormAct` and `ClassifierHead`: analytic costs match `FlopCounterMode`."""
import pytest
import torch

from dynamicnets.models.static import ClassifierHead, ConvNormAct
from dynamicnets.flops import counted_flops


@pytest.mark.parametrize("kernel,stride", [(1, 1), (1, 2), (3, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("size", [(7, 9), (1, 1), (32, 32)])
def test_conv_norm_act_2d(kernel, stride, size):
    layer = ConvNormAct(3, 5, kernel, stride).eval()
    x = torch.randn(2, 3, *size)
    flops, shape = layer.flops_and_shape((3, *size))
    y = layer(x)
    assert y.shape[1:] == shape
    assert counted_flops(layer, x) == 2 * flops


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 2), (5, 1), (5, 3)])
@pytest.mark.parametrize("length", [1, 10, 40])
def test_conv_norm_act_1d(kernel, stride, length):
    layer = ConvNormAct(2, 4, kernel, stride, spatial_dims=1).eval()
    x = torch.randn(2, 2, length)
    flops, shape = layer.flops_and_shape((2, length))
    assert layer(x).shape[1:] == shape
    assert counted_flops(layer, x) == 2 * flops


def test_act_flag():
    layer = ConvNormAct(1, 4, act=False).eval()
    assert (layer(torch.randn(1, 1, 6, 6)) < 0).any()
    layer = ConvNormAct(1, 4, act=True).eval()
    assert (layer(torch.randn(1, 1, 6, 6)) >= 0).all()


def test_spatial_dims_is_checked():
    with pytest.raises(ValueError, match="spatial_dims"):
        ConvNormAct(1, 1, spatial_dims=3)


@pytest.mark.parametrize("shape", [(6, 5, 3), (6, 11), (6, 1, 1)])
def test_classifier_head_pools_every_spatial_axis(shape):
    head = ClassifierHead(6, 4)
    x = torch.randn(2, *shape)
    expected = head.fc(x.flatten(2).mean(2))
    torch.testing.assert_close(head(x), expected)
    assert counted_flops(head, x) == 2 * head.flops()
