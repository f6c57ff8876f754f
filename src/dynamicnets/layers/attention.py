"""Dynamic features by attention: squeeze-and-excitation and CBAM.

- `SqueezeExcite` (Hu et al., CVPR 2018): `x * sigmoid(FC(ReLU(FC(avgpool(x)))))`.
- `ChannelAttention`, `SpatialAttention`, `CBAM` (Woo et al., ECCV 2018): a shared MLP
  on the average- and max-pooled descriptors for channels; a 7x7 conv over the
  channel-wise mean and max maps for positions; CBAM applies channel then spatial.

Each module has `attention(x)` returning the weights it multiplies by, so they can be
inspected or replaced, and `flops(H, W)` per-sample FLOPs as `FlopCounterMode` counts
them (FC layers and convs; pooling, sigmoid and the products are not counted).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import linear_flops


def _hidden_width(where: str, channels: int, reduction: int, min_hidden: int) -> int:
    values = {"channels": channels, "reduction": reduction, "min_hidden": min_hidden}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {key} must be a positive int, got {value!r}")
    return max(channels // reduction, min_hidden)


def _check_input(where: str, x: Tensor, channels: int) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise ConfigError(f"{where}: expected input (B, {channels}, H, W), got {tuple(x.shape)}")


class SqueezeExcite(nn.Module):
    """Channel attention from the average-pooled input.

    Args:
        channels: `C`.
        reduction, min_hidden: hidden width `max(C // reduction, min_hidden)`.

    Shapes:
        `attention: (B, C, H, W) -> (B, C, 1, 1)` in (0, 1);
        `forward: (B, C, H, W) -> (B, C, H, W)`.
    """

    def __init__(
        self, channels: int, reduction: int = 4, *, min_hidden: int = 4, device=None, dtype=None
    ) -> None:
        super().__init__()
        hidden = _hidden_width("SqueezeExcite", channels, reduction, min_hidden)
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.fc1 = nn.Linear(channels, hidden, **factory)
        self.fc2 = nn.Linear(hidden, channels, **factory)

    def attention(self, x: Tensor) -> Tensor:
        _check_input("SqueezeExcite", x, self.channels)
        weights = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))).sigmoid()
        return weights[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)

    def flops(self, height: int, width: int) -> int:
        return linear_flops(self.fc1) + linear_flops(self.fc2)


class ChannelAttention(nn.Module):
    """CBAM channel attention: `sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`.

    Args: as `SqueezeExcite` (CBAM uses `reduction=16`).

    Shapes:
        `attention: (B, C, H, W) -> (B, C, 1, 1)`; `forward: (B, C, H, W) -> (B, C, H, W)`.
    """

    def __init__(
        self, channels: int, reduction: int = 16, *, min_hidden: int = 4, device=None, dtype=None
    ) -> None:
        super().__init__()
        hidden = _hidden_width("ChannelAttention", channels, reduction, min_hidden)
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.fc1 = nn.Linear(channels, hidden, **factory)
        self.fc2 = nn.Linear(hidden, channels, **factory)

    def attention(self, x: Tensor) -> Tensor:
        _check_input("ChannelAttention", x, self.channels)
        batch = x.shape[0]
        # Both descriptors through the shared MLP in one pass: (2B, C).
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))])
        scores = self.fc2(torch.relu(self.fc1(pooled)))
        weights = (scores[:batch] + scores[batch:]).sigmoid()
        return weights[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)

    def flops(self, height: int, width: int) -> int:
        return 2 * (linear_flops(self.fc1) + linear_flops(self.fc2))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: `sigmoid(conv_kxk([mean_c(x), max_c(x)]))`.

    Args:
        kernel_size: odd size of the conv over the two maps (7 in CBAM).

    Shapes:
        `attention: (B, C, H, W) -> (B, 1, H, W)`; `forward: (B, C, H, W) -> (B, C, H, W)`.
    """

    def __init__(self, kernel_size: int = 7, *, device=None, dtype=None) -> None:
        super().__init__()
        valid = isinstance(kernel_size, int) and not isinstance(kernel_size, bool)
        if not valid or kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(
                f"SpatialAttention: kernel_size must be an odd positive int, got {kernel_size!r}"
            )
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(
            2, 1, kernel_size, padding=kernel_size // 2, device=device, dtype=dtype
        )

    def attention(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ConfigError(
                f"SpatialAttention: expected input (B, C, H, W), got {tuple(x.shape)}"
            )
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.conv(maps).sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)

    def flops(self, height: int, width: int) -> int:
        return 2 * 2 * self.kernel_size**2 * height * width


class CBAM(nn.Module):
    """Convolutional block attention module: channel attention, then spatial attention.

    Args:
        channels: `C`.
        reduction: of the channel MLP (16 in CBAM).
        kernel_size: of the spatial conv (7 in CBAM).

    Shapes:
        `(B, C, H, W) -> (B, C, H, W)`.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        *,
        min_hidden: int = 4,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channel = ChannelAttention(channels, reduction, min_hidden=min_hidden, **factory)
        self.spatial = SpatialAttention(kernel_size, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))

    def flops(self, height: int, width: int) -> int:
        return self.channel.flops(height, width) + self.spatial.flops(height, width)
