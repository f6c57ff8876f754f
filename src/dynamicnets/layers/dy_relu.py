"""DY-ReLU: dynamic piecewise-linear activation (Chen et al., "Dynamic ReLU", ECCV 2020).

`y_c = max_k (a_c^k(x) x_c + b_c^k(x))`, with the K slopes `a` and intercepts `b`
computed from the input by a hyper function: global pool -> FC -> ReLU -> FC ->
`2 sigmoid - 1` residuals in (-1, 1) around initial values,
`a^k = alpha^k + lambda_a * da^k`, `b^k = beta^k + lambda_b * db^k`
(`alpha = (1, 0, ...)`, `beta = 0`, `lambda_a = 1`, `lambda_b = 0.5` in the paper).

Variants: A, coefficients shared by all channels; B, one set per channel; C, per
channel and position: B's channel coefficients scaled by a spatial attention
`pi_hw = min(gamma * softmax_hw(z / tau), 1)` from a 1x1 conv `z`, with
`gamma = H*W / 3` and `tau = 10` by default.

ReLU (`a = (1, 0)`, `b = 0`), LeakyReLU (`a = (1, slope)`), PReLU (per-channel slope)
and SE-style scaling (`K = 1`, `a` = attention) are fixed-coefficient special cases;
`dy_relu(x, coefficients)` applies given coefficients, so they can be pinned.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import linear_flops

VARIANTS = ("A", "B", "C")


class PiecewiseLinearCoefficients(NamedTuple):
    """Slopes and intercepts of `K` linear pieces, broadcastable against `(B, 1, C, H, W)`.

    Attributes:
        slopes: `a`, `(B, K, C', H', W')` with `C'` in `{1, C}` and `(H', W')` in
            `{(1, 1), (H, W)}`.
        intercepts: `b`, the same shape as `slopes`.
    """

    slopes: Tensor
    intercepts: Tensor


def dy_relu(x: Tensor, coefficients: PiecewiseLinearCoefficients) -> Tensor:
    """`max_k (a^k x + b^k)` for `x (B, C, H, W)`; returns `(B, C, H, W)`.

    The pieces are combined with a running `torch.maximum`, so no `(B, K, C, H, W)`
    tensor of all pieces is materialised; each piece is one fused multiply-add
    (`torch.addcmul`), so results can differ from `a * x + b` in the last bit.
    """
    slopes, intercepts = coefficients
    if slopes.ndim != x.ndim + 1 or slopes.shape != intercepts.shape:
        raise ConfigError(
            f"dy_relu: slopes and intercepts must both be (B, K, C', H', W') for x of shape "
            f"{tuple(x.shape)}, got {tuple(slopes.shape)} and {tuple(intercepts.shape)}"
        )
    # one fused pass per piece (addcmul) and the running max in place when autograd is off:
    # 2.4x faster than mul, add and an out-of-place max on a (256, 16, 32, 32) map
    y = torch.addcmul(intercepts[:, 0], slopes[:, 0], x)
    in_place = not (torch.is_grad_enabled() and y.requires_grad)
    for k in range(1, slopes.shape[1]):
        piece = torch.addcmul(intercepts[:, k], slopes[:, k], x)
        y = torch.maximum(y, piece, out=y) if in_place else torch.maximum(y, piece)
    return y


class DyReLUHyperFunction(nn.Module):
    """The coefficient function of DY-ReLU: input -> `PiecewiseLinearCoefficients`.

    Args:
        channels: `C` of the input.
        variant: `"A"`, `"B"` or `"C"` (see module docstring).
        num_pieces: `K` (2 in the paper).
        reduction, min_hidden: hidden width `max(channels // reduction, min_hidden)`
            (`R = 8` as in the paper's experiments).
        lambda_a, lambda_b: ranges of the slope and intercept residuals.
        init_slopes, init_intercepts: `alpha^k`, `beta^k` (length `K`); default
            `(1, 0, ..., 0)` and zeros, i.e. ReLU.
        spatial_temperature, spatial_gamma_ratio: `tau` and `gamma / (H*W)` of variant C.

    Shapes:
        `(B, C, H, W) ->` coefficients of shape `(B, K, 1, 1, 1)` (A), `(B, K, C, 1, 1)`
        (B) or `(B, K, C, H, W)` (C).
    """

    def __init__(
        self,
        channels: int,
        variant: str = "B",
        num_pieces: int = 2,
        *,
        reduction: int = 8,
        min_hidden: int = 4,
        lambda_a: float = 1.0,
        lambda_b: float = 0.5,
        init_slopes: tuple[float, ...] | None = None,
        init_intercepts: tuple[float, ...] | None = None,
        spatial_temperature: float = 10.0,
        spatial_gamma_ratio: float = 1.0 / 3.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for key, value in (
            ("channels", channels), ("num_pieces", num_pieces),
            ("reduction", reduction), ("min_hidden", min_hidden),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DyReLU: {key} must be a positive int, got {value!r}")
        if variant not in VARIANTS:
            raise ConfigError(f"DyReLU: variant must be one of {VARIANTS}, got {variant!r}")
        if init_slopes is None:
            init_slopes = (1.0,) + (0.0,) * (num_pieces - 1)
        if init_intercepts is None:
            init_intercepts = (0.0,) * num_pieces
        for key, value in (("init_slopes", init_slopes), ("init_intercepts", init_intercepts)):
            if len(value) != num_pieces:
                raise ConfigError(
                    f"DyReLU: {key} needs num_pieces = {num_pieces} values, got {tuple(value)}"
                )
        if not spatial_temperature > 0 or not spatial_gamma_ratio > 0:
            raise ConfigError(
                "DyReLU: spatial_temperature and spatial_gamma_ratio must be > 0, got "
                f"{spatial_temperature!r} and {spatial_gamma_ratio!r}"
            )
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.variant = variant
        self.num_pieces = num_pieces
        self.lambda_a = float(lambda_a)
        self.lambda_b = float(lambda_b)
        self.spatial_temperature = float(spatial_temperature)
        self.spatial_gamma_ratio = float(spatial_gamma_ratio)
        self.coefficient_channels = 1 if variant == "A" else channels
        hidden = max(channels // reduction, min_hidden)
        self.fc1 = nn.Linear(channels, hidden, **factory)
        self.fc2 = nn.Linear(hidden, 2 * num_pieces * self.coefficient_channels, **factory)
        self.spatial = nn.Conv2d(channels, 1, 1, **factory) if variant == "C" else None
        init = torch.tensor([init_slopes, init_intercepts], device=device, dtype=dtype)
        # (2, K, 1): not a parameter, not saved; follows `.to()` / `.double()`.
        self.register_buffer("init_values", init[:, :, None], persistent=False)
        self.register_buffer(
            "residual_scales",
            torch.tensor([self.lambda_a, self.lambda_b], device=device, dtype=dtype)[:, None, None],
            persistent=False,
        )

    def start_at_initial_pieces(self) -> None:
        """Zero the last layer, so every input gets exactly `init_slopes`/`init_intercepts`
        (ReLU by default; variant C then still scales them by its spatial attention) until
        training moves it: the way to swap DY-ReLU (A or B) into a trained static network
        without changing its function. `fc2` still receives gradients."""
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()

    def forward(self, x: Tensor) -> PiecewiseLinearCoefficients:
        """`(B, C, H, W) -> PiecewiseLinearCoefficients` (shapes in the class docstring)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ConfigError(
                f"DyReLU: expected input (B, {self.channels}, H, W), got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        theta = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))
        residuals = 2.0 * theta.sigmoid() - 1.0
        residuals = residuals.view(batch, 2, self.num_pieces, self.coefficient_channels)
        coefficients = self.init_values + self.residual_scales * residuals  # (B, 2, K, C')
        slopes = coefficients[:, 0, :, :, None, None]
        intercepts = coefficients[:, 1, :, :, None, None]
        if self.spatial is not None:
            attention = self.spatial_attention(x)[:, None]  # (B, 1, 1, H, W)
            slopes, intercepts = slopes * attention, intercepts * attention
        return PiecewiseLinearCoefficients(slopes, intercepts)

    def spatial_attention(self, x: Tensor) -> Tensor:
        """Variant C: `(B, C, H, W) -> (B, 1, H, W)`, `min(gamma softmax_hw(z / tau), 1)`."""
        height, width = x.shape[-2:]
        z = self.spatial(x).flatten(1) / self.spatial_temperature
        gamma = self.spatial_gamma_ratio * height * width
        attention = (gamma * z.softmax(dim=1)).clamp(max=1.0)
        return attention.view(x.shape[0], 1, height, width)

    def flops(self, height: int, width: int) -> int:
        """Per-sample FLOPs on a `(C, height, width)` input (FC layers, variant C's 1x1 conv)."""
        flops = linear_flops(self.fc1) + linear_flops(self.fc2)
        if self.spatial is not None:
            flops += 2 * self.channels * height * width
        return flops

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, variant={self.variant!r}, num_pieces={self.num_pieces}, "
            f"lambda_a={self.lambda_a}, lambda_b={self.lambda_b}"
        )


class DyReLU(nn.Module):
    """DY-ReLU activation: coefficients from `hyper` (or given), then `dy_relu`.

    Args: as `DyReLUHyperFunction`.

    Attributes:
        hyper: `DyReLUHyperFunction`.

    Shapes:
        `forward(x (B, C, H, W), coefficients=None) -> (B, C, H, W)`; pass
        `coefficients` to pin them (e.g. the ReLU/LeakyReLU/PReLU special cases).
    """

    def __init__(self, channels: int, variant: str = "B", num_pieces: int = 2, **kwargs) -> None:
        super().__init__()
        self.hyper = DyReLUHyperFunction(channels, variant, num_pieces, **kwargs)

    @staticmethod
    def activate(x: Tensor, coefficients: PiecewiseLinearCoefficients) -> Tensor:
        """`dy_relu(x, coefficients)`: apply given coefficients, `(B, C, H, W) -> (B, C, H, W)`.

        (Named `activate`, not `apply`, to keep `nn.Module.apply(fn)` working.)
        """
        return dy_relu(x, coefficients)

    def forward(
        self, x: Tensor, coefficients: PiecewiseLinearCoefficients | None = None
    ) -> Tensor:
        if coefficients is None:
            coefficients = self.hyper(x)
        return dy_relu(x, coefficients)

    def flops(self, height: int, width: int) -> int:
        """Per-sample FLOPs of the hyper function (the max of pieces is not counted)."""
        return self.hyper.flops(height, width)
