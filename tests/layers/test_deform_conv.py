"""Deformable convolution v1/v2 in pure PyTorch, checked against plain convolutions."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets.errors import ConfigError
from dynamicnets.layers.deform_conv import DeformConv2d, deform_conv2d
from dynamicnets.flops import conv_out_size, counted_flops

GEOMETRIES = [
    dict(stride=1, padding=1, dilation=1, groups=1, offset_groups=1),
    dict(stride=2, padding=1, dilation=1, groups=2, offset_groups=2),
    dict(stride=1, padding=2, dilation=2, groups=1, offset_groups=4),
    dict(stride=(2, 1), padding=(0, 1), dilation=1, groups=2, offset_groups=1),
]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def setup(geometry, k=3, batch=2, channels=4, out_channels=6, h=9, w=8, dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.randn(batch, channels, h, w, dtype=dtype)
    weight = torch.randn(out_channels, channels // geometry["groups"], k, k, dtype=dtype)
    bias = torch.randn(out_channels, dtype=dtype)
    (sh, sw), (ph, pw), (dh, dw) = (_pair(geometry[n]) for n in ("stride", "padding", "dilation"))
    oh, ow = conv_out_size(h, k, sh, ph, dh), conv_out_size(w, k, sw, pw, dw)
    offset_shape = (batch, 2 * geometry["offset_groups"] * k * k, oh, ow)
    return x, weight, bias, offset_shape


def run(x, offset, weight, bias, geometry, mask=None):
    return deform_conv2d(
        x, offset, weight, bias, geometry["stride"], geometry["padding"], geometry["dilation"], mask
    )


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_zero_offsets_equal_conv2d(geometry):
    x, weight, bias, offset_shape = setup(geometry)
    out = run(x, torch.zeros(offset_shape), weight, bias, geometry)
    expected = F.conv2d(
        x, weight, bias, geometry["stride"], geometry["padding"], geometry["dilation"],
        geometry["groups"],
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def shifted_conv(x, weight, bias, geometry, dy, dx, channel_offsets=None):
    """Plain conv reading `x` at every tap position moved by `(dy, dx)`, zero outside `x`.

    Pads `x` wide enough, then convolves without padding from a window moved by the
    offset; `channel_offsets` `[(channels, dy, dx), ...]` moves channel slices separately.
    """
    (sh, sw), (ph, pw), (dh, dw) = (_pair(geometry[n]) for n in ("stride", "padding", "dilation"))
    k = weight.shape[-1]
    oh = conv_out_size(x.shape[-2], k, sh, ph, dh)
    ow = conv_out_size(x.shape[-1], k, sw, pw, dw)
    big = max(ph, pw) + 8
    padded = F.pad(x, (big, big, big, big))
    moves = channel_offsets or [(slice(None), dy, dx)]
    window = torch.cat(
        [
            padded[:, c, big - ph + my : big - ph + my + (oh - 1) * sh + (k - 1) * dh + 1,
                   big - pw + mx : big - pw + mx + (ow - 1) * sw + (k - 1) * dw + 1]
            for c, my, mx in moves
        ],
        dim=1,
    )
    return F.conv2d(window, weight, bias, (sh, sw), 0, (dh, dw), geometry["groups"])


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("dy, dx", [(1, 0), (-2, 1), (0, -1), (3, 3)])
def test_integer_offsets_equal_a_shifted_conv(geometry, dy, dx):
    x, weight, bias, offset_shape = setup(geometry)
    offset = torch.zeros(offset_shape)
    offset[:, 0::2] = dy
    offset[:, 1::2] = dx
    out = run(x, offset, weight, bias, geometry)
    expected = shifted_conv(x, weight, bias, geometry, dy, dx)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_per_group_offsets_move_only_their_channels():
    geometry = dict(stride=1, padding=1, dilation=1, groups=1, offset_groups=2)
    x, weight, bias, offset_shape = setup(geometry)
    offset = torch.zeros(offset_shape)
    offset[:, 18::2] = 1.0  # second offset group (channels 2, 3): dy = +1
    out = run(x, offset, weight, bias, geometry)
    moves = [(slice(0, 2), 0, 0), (slice(2, 4), 1, 0)]
    expected = shifted_conv(x, weight, bias, geometry, 0, 0, channel_offsets=moves)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_fractional_offset_interpolates_bilinearly():
    x = torch.arange(20.0).view(1, 1, 4, 5)
    weight = torch.ones(1, 1, 1, 1)
    offset = torch.zeros(1, 2, 4, 5)
    offset[:, 0] = 0.25  # dy
    offset[:, 1] = -0.5  # dx
    out = deform_conv2d(x, offset, weight)
    # value at (y + 0.25, x - 0.5) of the linear image v = 5y + x, zero beyond the border
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(5.0), indexing="ij")
    expected = 5 * (ys + 0.25) + (xs - 0.5)
    expected[-1] = 0.75 * (5 * 3 + xs[-1] - 0.5)  # the row below the last is zero
    expected[:, 0] = 0.5 * (5 * (ys[:, 0] + 0.25))  # the column left of the first is zero
    expected[-1, 0] = 0.75 * 0.5 * 15
    torch.testing.assert_close(out[0, 0], expected)


def test_modulation_masks_scale_the_samples():
    geometry = GEOMETRIES[1]
    x, weight, bias, offset_shape = setup(geometry)
    offset = torch.randn(offset_shape)
    mask_shape = (offset_shape[0], offset_shape[1] // 2, *offset_shape[2:])
    v1 = run(x, offset, weight, bias, geometry)
    torch.testing.assert_close(run(x, offset, weight, bias, geometry, torch.ones(mask_shape)), v1)
    half = run(x, offset, weight, bias, geometry, torch.full(mask_shape, 0.5))
    torch.testing.assert_close(half - bias[:, None, None], 0.5 * (v1 - bias[:, None, None]))
    zero = run(x, offset, weight, bias, geometry, torch.zeros(mask_shape))
    torch.testing.assert_close(zero, bias[:, None, None].expand_as(zero))


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_gradcheck_double(modulated):
    geometry = dict(stride=1, padding=1, dilation=1, groups=1, offset_groups=1)
    x, weight, bias, offset_shape = setup(
        geometry, batch=1, channels=2, out_channels=2, h=4, w=4, dtype=torch.float64
    )
    # random fractional offsets: bilinear sampling is not differentiable at integer positions
    offset = (torch.rand(offset_shape, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    inputs = [x.requires_grad_(), offset, weight.requires_grad_(), bias.requires_grad_()]
    if modulated:
        inputs.append(torch.rand(1, 9, 4, 4, dtype=torch.float64, requires_grad=True))
    fn = lambda x, o, w, b, m=None: deform_conv2d(x, o, w, b, 1, 1, 1, m)
    assert torch.autograd.gradcheck(fn, tuple(inputs))


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_module_starts_as_a_plain_conv(modulated):
    torch.manual_seed(0)
    layer = DeformConv2d(4, 6, 3, stride=2, groups=2, offset_groups=2, modulated=modulated)
    x = torch.randn(2, 4, 9, 9)
    conv = F.conv2d(x, layer.weight, None, 2, 1, 1, 2)
    scale = 0.5 if modulated else 1.0  # v2 masks start at sigmoid(0)
    expected = scale * conv + layer.bias[:, None, None]
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    offset, mask = layer.predict(x)
    assert offset.shape == (2, 36, 5, 5) and (mask is None) != modulated
    assert counted_flops(layer, x) == 2 * layer.flops(9, 9)


def test_module_learns_offsets():
    torch.manual_seed(0)
    layer = DeformConv2d(2, 3, 3, modulated=True)
    with torch.no_grad():
        layer.offset_conv.bias.normal_(0, 0.5)  # non-zero offsets so every weight has a gradient
    layer(torch.randn(2, 2, 6, 6)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_explicit_offsets_bypass_the_predictor():
    torch.manual_seed(0)
    layer = DeformConv2d(2, 3, 3, bias=False)
    x = torch.randn(1, 2, 5, 5)
    offset = torch.zeros(1, 18, 5, 5)
    offset[:, 0::2] = 1.0
    geometry = dict(stride=1, padding=1, dilation=1, groups=1)
    expected = shifted_conv(x, layer.weight, None, geometry, 1, 0)
    torch.testing.assert_close(layer(x, offset), expected, rtol=1e-5, atol=1e-5)


def test_bad_shapes_raise_config_error():
    x = torch.randn(1, 4, 5, 5)
    weight = torch.randn(3, 4, 3, 3)
    with pytest.raises(ConfigError, match="offset must be"):
        deform_conv2d(x, torch.zeros(1, 18, 4, 4), weight, padding=1)
    with pytest.raises(ConfigError, match="offset must be"):
        deform_conv2d(x, torch.zeros(1, 54, 5, 5), weight, padding=1)  # 3 groups do not divide 4
    with pytest.raises(ConfigError, match="mask must be"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), weight, padding=1, mask=torch.ones(1, 18, 5, 5))
    with pytest.raises(ConfigError, match="offset_groups"):
        DeformConv2d(4, 4, 3, offset_groups=3)
