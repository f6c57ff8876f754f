"""Straight-through estimators: hard 0/1 decisions whose gradient is a soft surrogate's.

- `ste_threshold`: `x > threshold` forward, identity gradient (Bengio et al. 2013).
- `ImprovedSemHash`: improved semantic hashing (Kaiser & Bengio 2018, "Discrete
  Autoencoders for Sequence Models"): a saturating sigmoid of noisy log-odds, mixed
  with its hard bits so the network learns to work with exact 0/1 gates.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def ste_threshold(x: Tensor, threshold: float = 0.5) -> Tensor:
    """Hard threshold with an identity (straight-through) gradient.

    Args:
        x: `(...)` soft gate values (e.g. probabilities).
        threshold: values strictly above it become 1.

    Returns:
        `(...)` tensor of `x`'s dtype holding exactly `0.0` or `1.0`; `d out / d x = 1`.
    """
    hard = (x > threshold).to(x.dtype)
    return hard + (x - x.detach())


def saturating_sigmoid(x: Tensor) -> Tensor:
    """`clamp(1.2 * sigmoid(x) - 0.1, 0, 1)`: reaches exactly 0 and 1 for finite `x`.

    Args:
        x: `(...)` log-odds.

    Returns:
        `(...)` values in `[0, 1]`, equal to 0.5 at `x = 0`.
    """
    return torch.clamp(1.2 * torch.sigmoid(x) - 0.1, 0.0, 1.0)


def improved_semhash(
    v: Tensor,
    noise_std: float = 1.0,
    hard_prob: float = 0.5,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Improved semantic hashing gate values.

    While training, with Gaussian noise `xi ~ N(0, noise_std^2)`:
    `soft = saturating_sigmoid(v + xi)` and `bits = (v + xi > 0)`. Each sample (index
    of the leading dimension) independently takes, with probability `hard_prob`, the
    hard bits with the gradient of `soft` (straight-through), and otherwise `soft`
    itself. The noise and the per-sample choice are drawn from `generator` (noise
    first), so the same generator state gives the same result. In eval
    (`training=False`) the result is the bits `(v > 0)` without noise.

    Args:
        v: `(B, ...)` gate log-odds.
        noise_std: standard deviation of `xi`, `>= 0`.
        hard_prob: probability that a sample uses the hard bits, in `[0, 1]`
            (Kaiser & Bengio use 0.5).
        training: whether to add noise and mix (training) or return bits (eval).
        generator: optional `torch.Generator` on `v`'s device.

    Returns:
        `(B, ...)` tensor of `v`'s dtype with values in `[0, 1]`; exactly 0/1 in eval and
        for the samples that took the hard bits.
    """
    if not noise_std >= 0:
        raise ConfigError(f"improved_semhash: noise_std must be >= 0, got {noise_std!r}")
    if not 0.0 <= hard_prob <= 1.0:
        raise ConfigError(f"improved_semhash: hard_prob must be in [0, 1], got {hard_prob!r}")
    if not training:
        return (v > 0).to(v.dtype)
    if v.dim() == 0:
        raise ValueError("improved_semhash needs a leading batch dimension, got a 0-d tensor")
    noisy = v
    if noise_std > 0:
        xi = torch.randn(v.shape, generator=generator, device=v.device, dtype=v.dtype)
        noisy = v + noise_std * xi
    soft = saturating_sigmoid(noisy)
    bits = (noisy > 0).to(v.dtype)
    hard = bits + (soft - soft.detach())
    draw = torch.rand(v.shape[0], generator=generator, device=v.device)
    use_hard = (draw < hard_prob).view(-1, *([1] * (v.dim() - 1)))
    return torch.where(use_hard, hard, soft)


class ImprovedSemHash(nn.Module):
    """Binary gate by improved semantic hashing (see `improved_semhash`).

    `self.training` chooses between the noisy soft/hard mix (training) and the exact
    bits `(v > 0)` (eval). No parameters; nothing is changed in `forward`.

    Args:
        noise_std: standard deviation of the Gaussian noise added while training.
        hard_prob: probability that a sample uses hard bits while training.
    """

    def __init__(self, noise_std: float = 1.0, hard_prob: float = 0.5):
        super().__init__()
        if not noise_std >= 0:
            raise ConfigError(f"ImprovedSemHash: noise_std must be >= 0, got {noise_std!r}")
        if not 0.0 <= hard_prob <= 1.0:
            raise ConfigError(f"ImprovedSemHash: hard_prob must be in [0, 1], got {hard_prob!r}")
        self.noise_std = float(noise_std)
        self.hard_prob = float(hard_prob)

    def forward(self, v: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Gate values of the log-odds `v`.

        Args:
            v: `(B, ...)` gate log-odds.
            generator: optional `torch.Generator` for reproducible training draws.

        Returns:
            `(B, ...)` gate values in `[0, 1]` (exact 0/1 in eval).
        """
        return improved_semhash(v, self.noise_std, self.hard_prob, self.training, generator)

    def extra_repr(self) -> str:
        return f"noise_std={self.noise_std}, hard_prob={self.hard_prob}"
