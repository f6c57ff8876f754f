"""Deformable convolution v1 (Dai et al., ICCV 2017) and v2, modulated (Zhu et al., CVPR 2019).

Each kernel tap `k` of each output position `p` reads the input at
`p * stride - padding + k * dilation + offset(p, k)`, a fractional position sampled
bilinearly (zero outside the image); v2 also multiplies each sample by a mask in
(0, 1). Pure PyTorch: the samples are gathered into a column matrix
`(B, C * kh * kw, H' * W')` and multiplied by the kernel, so the matrix product costs
exactly what the plain convolution costs. The bilinear interpolation (about
4 multiply-adds per sampled value) is elementwise arithmetic that `FlopCounterMode`
does not count, so `flops` does not either.

Offsets and masks use torchvision's layout: `offset (B, 2 * G * kh * kw, H', W')` with
`(dy, dx)` pairs, offset group major then tap (row-major over the kernel);
`mask (B, G * kh * kw, H', W')`; `G` offset groups share the input channels evenly.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import conv_out_size
from .cond_conv import check_conv_args, store_conv_geometry


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ConfigError(f"deform_conv2d: {name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def deform_conv2d(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution (v2 when `mask` is given).

    Args:
        x: `(B, C, H, W)`.
        offset: `(B, 2 * G * kh * kw, H', W')`, `G` offset groups (`C % G == 0`).
        weight: `(O, C // groups, kh, kw)`; `groups = C // weight.shape[1]`.
        bias: `(O,)` or None.
        stride, padding, dilation: ints or pairs, as `F.conv2d`.
        mask: `(B, G * kh * kw, H', W')` modulation or None.

    Returns:
        `(B, O, H', W')`. Zero offsets and no mask give `F.conv2d(x, weight, bias, ...)`.
    """
    (sh, sw), (ph, pw), (dh, dw) = (
        _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    )
    batch, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    taps = kh * kw
    groups = channels // group_channels if group_channels >= 1 else 0
    if groups < 1 or channels % group_channels or out_channels % groups:
        raise ConfigError(
            f"deform_conv2d: weight {tuple(weight.shape)} does not fit {channels} input channels"
        )
    out_h = conv_out_size(height, kh, sh, ph, dh)
    out_w = conv_out_size(width, kw, sw, pw, dw)
    offset_groups = offset.shape[1] // (2 * taps) if offset.ndim == 4 else 0
    if (
        offset.shape != (batch, 2 * offset_groups * taps, out_h, out_w)
        or offset_groups < 1
        or channels % offset_groups
    ):
        raise ConfigError(
            f"deform_conv2d: offset must be (B={batch}, 2 * G * {taps}, {out_h}, {out_w}) with "
            f"G dividing {channels}, got {tuple(offset.shape)}"
        )
    if mask is not None and mask.shape != (batch, offset_groups * taps, out_h, out_w):
        raise ConfigError(
            f"deform_conv2d: mask must be (B={batch}, {offset_groups * taps}, {out_h}, {out_w}), "
            f"got {tuple(mask.shape)}"
        )
    columns = _sample_columns(
        x, offset.reshape(batch, offset_groups, taps, 2, out_h, out_w),
        None if mask is None else mask.reshape(batch, offset_groups, taps, out_h, out_w),
        (kh, kw), (sh, sw), (ph, pw), (dh, dw),
    ).reshape(batch, groups, group_channels * taps, out_h * out_w)
    kernel = weight.reshape(groups, out_channels // groups, group_channels * taps)
    out = torch.matmul(kernel, columns).reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias[:, None, None]
    return out


def _sample_columns(
    x: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """Bilinear samples at the deformed taps, as columns `(B, C, taps, L = H' * W')`.

    `offset` is `(B, G, taps, 2, H', W')`, `mask` `(B, G, taps, H', W')` or None.
    """
    batch, channels, height, width = x.shape
    _, offset_groups, taps, _, out_h, out_w = offset.shape
    group_channels = channels // offset_groups
    dtype, device = x.dtype, x.device
    rows = torch.arange(kernel[0], device=device, dtype=dtype) * dilation[0]
    cols = torch.arange(kernel[1], device=device, dtype=dtype) * dilation[1]
    tap_y, tap_x = rows.repeat_interleave(kernel[1]), cols.repeat(kernel[0])
    base_y = torch.arange(out_h, device=device, dtype=dtype) * stride[0] - padding[0]
    base_x = torch.arange(out_w, device=device, dtype=dtype) * stride[1] - padding[1]
    # (B, G, taps, H', W') sampling positions.
    pos_y = tap_y[:, None, None] + base_y[None, :, None] + offset[:, :, :, 0]
    pos_x = tap_x[:, None, None] + base_x[None, None, :] + offset[:, :, :, 1]
    y0, x0 = pos_y.floor(), pos_x.floor()
    frac_y, frac_x = pos_y - y0, pos_x - x0
    y0, x0 = y0.long(), x0.long()

    # Rows of (B * G * H * W, C / G): pixel (b, g, y, x) of offset group g's channels.
    pixels = (
        x.reshape(batch, offset_groups, group_channels, height * width)
        .transpose(2, 3)
        .reshape(-1, group_channels)
    )
    image_base = (
        torch.arange(batch * offset_groups, device=device).view(batch, offset_groups, 1, 1, 1)
        * (height * width)
    )
    sampled = None
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        corner = (frac_y if dy else 1 - frac_y) * (frac_x if dx else 1 - frac_x) * inside
        index = image_base + yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1)
        term = pixels[index.reshape(-1)].view(*index.shape, group_channels) * corner[..., None]
        sampled = term if sampled is None else sampled + term
    if mask is not None:
        sampled = sampled * mask[..., None]
    # (B, G, taps, H', W', C/G) -> (B, C, taps, L): channel-major columns like conv weights.
    return sampled.permute(0, 1, 5, 2, 3, 4).reshape(batch, channels, taps, out_h * out_w)


class DeformConv2d(nn.Module):
    """Deformable convolution with its own offset (and mask) predictor.

    The predictor is a plain convolution with the same geometry, initialised to zero,
    so at initialisation offsets are zero (a plain convolution) and v2 masks are 0.5.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: as `nn.Conv2d`.
        padding: `None` for `dilation * (kernel_size // 2)`.
        offset_groups: `G`, groups of input channels sharing one offset field.
        bias: bias of the deformable convolution.
        modulated: v2 (learned mask) if True, v1 otherwise.

    Attributes:
        weight: `(out_channels, in_channels // groups, k, k)`; bias `(out_channels,)`.
        offset_conv: `nn.Conv2d(in_channels, (2 or 3) * G * k * k, k, stride, padding)`;
            the first `2 G k k` outputs are offsets, the rest mask logits.

    Shapes:
        `forward(x (B, C_in, H, W), offset=None, mask=None) -> (B, C_out, H', W')`;
        an explicit `offset` (and `mask`) bypasses the predictor.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
        *,
        modulated: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_conv_args(
            "DeformConv2d", in_channels, out_channels, kernel_size, stride, dilation, groups
        )
        valid = isinstance(offset_groups, int) and not isinstance(offset_groups, bool)
        if not valid or offset_groups < 1 or in_channels % offset_groups:
            raise ConfigError(
                f"DeformConv2d: offset_groups must be a positive int dividing in_channels "
                f"({in_channels}), got {offset_groups!r}"
            )
        factory = {"device": device, "dtype": dtype}
        store_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self.offset_groups = offset_groups
        self.modulated = modulated
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size, **factory)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        taps = offset_groups * kernel_size**2
        self.offset_conv = nn.Conv2d(
            in_channels, (3 if modulated else 2) * taps, kernel_size, stride, self.padding,
            dilation, **factory,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Conv2d
        if self.bias is not None:
            bound = 1.0 / math.sqrt((self.in_channels // self.groups) * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """`(B, C_in, H, W) -> offset (B, 2 G k k, H', W'), mask (B, G k k, H', W') | None`."""
        out = self.offset_conv(x)
        split = 2 * self.offset_groups * self.kernel_size**2
        if not self.modulated:
            return out, None
        return out[:, :split], out[:, split:].sigmoid()

    def forward(
        self, x: Tensor, offset: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"DeformConv2d: expected x of shape (B, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}"
            )
        if offset is None:
            offset, predicted_mask = self.predict(x)
            mask = predicted_mask if mask is None else mask
        return deform_conv2d(
            x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask
        )

    def flops(self, height: int, width: int) -> int:
        """Per-sample FLOPs with the built-in predictor: predictor conv + the column product."""
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        oh, ow = conv_out_size(height, k, s, p, d), conv_out_size(width, k, s, p, d)
        predictor = 2 * self.offset_conv.out_channels * self.in_channels * k * k * oh * ow
        conv = 2 * self.weight.numel() * oh * ow
        return predictor + conv
