"""Spatial transformer (Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015).

A localisation network looks at the input and regresses an affine transform `theta`
`(B, 2, 3)`; `F.affine_grid` turns it into a sampling grid of the *output* size and
`F.grid_sample` (bilinear) reads the input there. The output can be smaller than the input:
a classifier then runs on a small glimpse (a 28x28 digit out of a 60x60 cluttered canvas)
instead of the whole canvas, which is where the saving comes from.

- `theta` starts at the identity (the regressor's weight is zero, its bias the identity), so
  an untrained transformer returns the whole input, resized to the output size.
- `attention=True` restricts `theta` to an isotropic scale and a translation,
  `[[s, 0, tx], [0, s, ty]]` (the "attention" variant of the paper: a square crop).
- The localisation network is any module mapping `(B, C, H, W)` to `(B, F)` features, or
  by default `LocalisationNet`, a small CNN on an average-pooled copy of the input.

Costs (per sample, 2 FLOPs per multiply-add). `flops_and_shape` counts what
`torch.utils.flop_counter.FlopCounterMode` counts: the localisation network and the
regressor. `F.affine_grid` and `F.grid_sample` are *not* counted by `FlopCounterMode` (it
has no formula for them), and the library counts them like pooling and resizing: free.
Their arithmetic is given apart, in `cost_breakdown(in_shape)["sampling"]`:
`12 * Ho * Wo` for the grid (a 2x3 matrix times `(x, y, 1)` per output position) plus
`8 * C * Ho * Wo` for the bilinear reads (4 weighted taps per output value); for a
`1x28x28` glimpse that is 15,680 FLOPs.

Example:
    >>> stn = SpatialTransformer(1, input_size=60, output_size=28)
    >>> glimpse = stn(torch.randn(8, 1, 60, 60))      # (8, 1, 28, 28)
    >>> theta = stn.transform(torch.randn(8, 1, 60, 60))  # (8, 2, 3)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import conv_out_size, flops_and_shape, linear_flops


def size_pair(value, name: str, owner: str) -> tuple[int, int]:
    """`value` (an int or an `(h, w)` pair of ints >= 1) as `(h, w)`.

    Raises:
        ConfigError: naming `name`, for anything else.
    """
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ConfigError(f"{owner}: {name} must be a positive int or a pair (height, width) of them, got {value!r}")
    return int(pair[0]), int(pair[1])


class LocalisationNet(nn.Module):
    """The default localisation network: a small CNN on an average-pooled copy of the input.

    `adaptive_avg_pool -> pool_size` (any input size works), then three 3x3 conv-BN-ReLU layers (`width`,
    `2 width` stride 2, `2 width` stride 2), flatten (the position of what it sees is kept:
    no global pooling), `Linear -> hidden` and ReLU.

    Args:
        in_chans: input channels.
        pool_size: `(h, w)` the input is average-pooled to first (`SpatialTransformer` builds
            it with at most its input size).
        width: channels of the first conv.
        hidden: features out.

    Shapes:
        `(B, in_chans, H, W) -> (B, hidden)`.
    """

    def __init__(self, in_chans: int, pool_size: tuple[int, int], *, width: int = 8, hidden: int = 32,
                 device=None, dtype=None) -> None:
        from ..models.static.conv_norm_act import ConvNormAct  # models import layers: resolve late

        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_chans = in_chans
        self.pool_size = size_pair(pool_size, "pool_size", "LocalisationNet")
        self.convs = nn.Sequential(
            ConvNormAct(in_chans, width, 3, 1, **factory),
            ConvNormAct(width, 2 * width, 3, 2, **factory),
            ConvNormAct(2 * width, 2 * width, 3, 2, **factory),
        )
        h, w = self.pool_size
        for _ in range(2):
            h, w = conv_out_size(h, 3, 2, 1), conv_out_size(w, 3, 2, 1)
        self.fc = nn.Linear(2 * width * h * w, hidden, **factory)
        self.hidden = hidden

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.pool_size:
            x = F.adaptive_avg_pool2d(x, self.pool_size)
        return torch.relu(self.fc(self.convs(x).flatten(1)))

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Per-sample FLOPs on a `(C, H, W)` input (the pooling is free) and `(hidden,)`."""
        flops, _ = flops_and_shape(self.convs, (in_shape[0], *self.pool_size))
        return flops + linear_flops(self.fc), (self.hidden,)


class SpatialTransformer(nn.Module):
    """Localise, then sample a glimpse: `(B, C, H, W) -> (B, C, *output_size)`.

    Args:
        in_chans: input channels.
        input_size: `(H, W)` (or one int) of the inputs it is built for.
        output_size: `(Ho, Wo)` (or one int) of the glimpse, each `<= input_size`.
        localisation: a module `(B, in_chans, H, W) -> (B, F)`; None builds a
            `LocalisationNet` (`loc_pool`, `loc_width`, `loc_hidden`).
        attention: constrain `theta` to scale + translation (3 numbers instead of 6).
        loc_pool: side the default localisation network pools the input to first.
        loc_width, loc_hidden: its first conv's channels and its features out.

    Attributes:
        localisation: the localisation network.
        regressor: `nn.Linear(F, 3 or 6)`, zero weight, bias the identity transform.

    Raises:
        ConfigError: a size that is not a positive int (pair), `output_size` larger than
            `input_size`, or a `localisation` whose output is not `(B, F)`.
    """

    def __init__(
        self,
        in_chans: int,
        input_size: int | tuple[int, int],
        output_size: int | tuple[int, int],
        *,
        localisation: nn.Module | None = None,
        attention: bool = False,
        loc_pool: int = 20,
        loc_width: int = 8,
        loc_hidden: int = 32,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        owner = "SpatialTransformer"
        if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
            raise ConfigError(f"{owner}: in_chans must be a positive int, got {in_chans!r}")
        self.in_chans = in_chans
        self.input_size = size_pair(input_size, "input_size", owner)
        self.output_size = size_pair(output_size, "output_size", owner)
        self._check_output_size(self.input_size)
        self.attention = bool(attention)
        if localisation is None:
            for key, value in (("loc_width", loc_width), ("loc_hidden", loc_hidden)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ConfigError(f"{owner}: {key} must be a positive int, got {value!r}")
            pool = tuple(min(p, s) for p, s in zip(size_pair(loc_pool, "loc_pool", owner), self.input_size))
            localisation = LocalisationNet(in_chans, pool, width=loc_width, hidden=loc_hidden,
                                           device=device, dtype=dtype)
        self.localisation = localisation
        _, features = flops_and_shape(localisation, (in_chans, *self.input_size))
        if not (isinstance(features, tuple) and len(features) == 1):
            raise ConfigError(f"{owner}: localisation must map (B, C, H, W) to (B, F) features, but on a "
                              f"{(in_chans, *self.input_size)} sample it gives per-sample shape {features}")
        identity = [1.0, 0.0, 0.0] if self.attention else [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        self.regressor = nn.Linear(features[0], len(identity), device=device, dtype=dtype)
        with torch.no_grad():
            self.regressor.weight.zero_()
            self.regressor.bias.copy_(torch.tensor(identity))

    def _check_output_size(self, size: tuple[int, int]) -> None:
        if self.output_size[0] > size[0] or self.output_size[1] > size[1]:
            raise ConfigError(f"SpatialTransformer: output_size {self.output_size} is larger than the input "
                              f"{size}; a glimpse is at most the input's size")

    def transform(self, x: Tensor) -> Tensor:
        """The affine transforms: `(B, C, H, W) -> theta (B, 2, 3)` (normalised coordinates,
        `[-1, 1]` spans the input; the identity samples all of it).

        Raises:
            ConfigError: `output_size` larger than this input.
        """
        self._check_output_size(tuple(x.shape[-2:]))
        params = self.regressor(self.localisation(x))
        if not self.attention:
            return params.view(-1, 2, 3)
        scale, tx, ty = params.unbind(-1)
        zero = torch.zeros_like(scale)
        return torch.stack([scale, zero, tx, zero, scale, ty], dim=-1).view(-1, 2, 3)

    def sample(self, x: Tensor, theta: Tensor) -> Tensor:
        """Bilinear glimpses: `x (B, C, H, W)`, `theta (B, 2, 3)` -> `(B, C, *output_size)`.

        Raises:
            ConfigError: `output_size` larger than this input, or `theta` not `(B, 2, 3)`.
        """
        self._check_output_size(tuple(x.shape[-2:]))
        if tuple(theta.shape) != (x.shape[0], 2, 3):
            raise ConfigError(f"SpatialTransformer: theta must be one affine transform per sample, shape "
                              f"(B, 2, 3) = ({x.shape[0]}, 2, 3), got {tuple(theta.shape)}")
        grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], *self.output_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        """`(B, C, H, W) -> (B, C, *output_size)`; `theta (B, 2, 3)` given skips localisation."""
        return self.sample(x, self.transform(x) if theta is None else theta)

    def cost_breakdown(self, in_shape: tuple[int, ...]) -> dict[str, int]:
        """Per-sample FLOPs on a `(C, H, W)` input by part: `localisation`, `regressor` (both
        counted by `FlopCounterMode`) and `sampling` (grid + bilinear reads, not counted;
        see the module docstring)."""
        loc, _ = flops_and_shape(self.localisation, tuple(in_shape))
        positions = self.output_size[0] * self.output_size[1]
        return {"localisation": loc, "regressor": linear_flops(self.regressor),
                "sampling": 12 * positions + 8 * in_shape[0] * positions}

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Per-sample FLOPs `FlopCounterMode` counts (localisation + regressor; the sampling
        is free, as resizing is) and the `(C, Ho, Wo)` glimpse shape."""
        parts = self.cost_breakdown(in_shape)
        return parts["localisation"] + parts["regressor"], (in_shape[0], *self.output_size)
