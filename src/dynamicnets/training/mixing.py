"""Batch mixing for training: Mixup and CutMix.

- Mixup (Zhang et al., ICLR 2018): `x = lam * x + (1 - lam) * x[perm]`, `lam ~ Beta(a, a)`.
- CutMix (Yun et al., ICCV 2019): a box of area `(1 - lam) * H * W` (centre uniform, clipped
  at the borders) is pasted from `x[perm]`; `lam` becomes the exact share of the image
  left, `1 - box area / (H * W)`.

With both on, each batch uses one of them, CutMix with probability one half (DeiT's
recipe). The loss is the `lam`-weighted mix of the losses against both label sets,
`lam * L(out, target_a) + (1 - lam) * L(out, target_b)`; `MixedBatch.dominant` is the
label set of the larger share (for accuracy and for losses that need one hard label).
Random draws come from torch's global generator, which the trainer seeds every epoch,
so mixed runs stay reproducible and resumable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True)
class MixedBatch:
    """A mixed batch: `x (B, ...)`, labels `target_a (B,)` (the batch's own) and `target_b
    (B,)` (those of the samples mixed in), and `lam`, the share of `target_a`."""

    x: Tensor
    target_a: Tensor
    target_b: Tensor
    lam: float

    @property
    def dominant(self) -> Tensor:
        """`(B,)` the label set with the larger share."""
        return self.target_a if self.lam >= 0.5 else self.target_b


@dataclass(frozen=True)
class BatchMixing:
    """Mixup and/or CutMix of training batches.

    Attributes:
        mixup_alpha: Beta concentration of Mixup's `lam` (0 = off; 0.8 in DeiT).
        cutmix_alpha: Beta concentration of CutMix's `lam` (0 = off; 1.0 in DeiT).

    Raises:
        ConfigError: a negative or non-finite alpha, naming the key (`mixup`, `cutmix`).
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    def __post_init__(self) -> None:
        for key, value in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"key {key!r}: expected a number >= 0 (the Beta alpha; 0 = off), got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, x: Tensor, target: Tensor) -> MixedBatch:
        """Mix `x (B, ...)` (CutMix: `(B, C, H, W)`) with a random permutation of itself.

        Raises:
            ConfigError: CutMix on inputs that are not `(B, C, H, W)` images.
        """
        if not self.enabled:
            return MixedBatch(x, target, target, 1.0)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or bool(torch.rand(()) < 0.5))
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(x.shape[0]).to(x.device)
        if not use_cutmix:
            return MixedBatch(lam * x + (1.0 - lam) * x[perm], target, target[perm], lam)
        if x.dim() != 4:
            raise ConfigError(f"key 'cutmix': needs (B, C, H, W) images, got inputs of shape {tuple(x.shape)}")
        top, bottom, left, right = cutmix_box(x.shape[-2], x.shape[-1], lam)
        mixed = x.clone()
        mixed[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
        kept = 1.0 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])
        return MixedBatch(mixed, target, target[perm], kept)


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """`(top, bottom, left, right)` of a box of about `(1 - lam)` of a `height x width`
    image, its centre uniform over the image, clipped at the borders."""
    cut = math.sqrt(1.0 - lam)
    box_h, box_w = int(height * cut), int(width * cut)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    return top, bottom, left, right
