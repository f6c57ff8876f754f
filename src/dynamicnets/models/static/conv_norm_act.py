"""`ConvNormAct`: convolution (no bias) + BatchNorm + optional ReLU, in 1-D or 2-D."""
from __future__ import annotations

from torch import Tensor, nn

from ...flops import conv1d_flops, conv2d_flops


class ConvNormAct(nn.Module):
    """`conv -> BatchNorm -> ReLU` (ReLU optional), padding `kernel_size // 2`.

    Args:
        in_chans, out_chans: channels in and out.
        kernel_size, stride: of the convolution (square in 2-D).
        act: apply ReLU after the norm (False for the last conv of a residual branch).
        spatial_dims: 2 for `(B, C, H, W)` inputs (Conv2d/BatchNorm2d), 1 for `(B, C, L)`.

    Shapes:
        `(B, in_chans, *S) -> (B, out_chans, *S')`, `S' = ceil(S / stride)` for odd kernels.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        act: bool = True,
        spatial_dims: int = 2,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims}")
        conv_cls = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
        norm_cls = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm1d
        factory = {"device": device, "dtype": dtype}
        self.spatial_dims = spatial_dims
        self.conv = conv_cls(
            in_chans, out_chans, kernel_size, stride, kernel_size // 2, bias=False, **factory
        )
        self.bn = norm_cls(out_chans, **factory)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Per-sample FLOPs on a `(C, *S)` input and the `(C', *S')` output shape."""
        if self.spatial_dims == 2:
            flops, oh, ow = conv2d_flops(self.conv, in_shape[1], in_shape[2])
            return flops, (self.conv.out_channels, oh, ow)
        flops, ol = conv1d_flops(self.conv, in_shape[1])
        return flops, (self.conv.out_channels, ol)
