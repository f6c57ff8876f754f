"""Per-sample channel gates: they decide which output channels of a conv run for each sample.

Two gates, both reading a pooled descriptor `(B, C_in)` of the conv's input and scoring
its `C_out` output channels with one linear layer:

- `GumbelChannelGate` (channel gating with Gumbel selection, as ConvNet-AIG gates blocks):
  per-channel log-odds; while training a straight-through Gumbel-sigmoid gives exact 0/1
  keep decisions whose gradient is the relaxed sample's; in eval the decision is
  `logit > 0`. Each sample keeps its own number of channels. `min_keep` forces the
  highest-scoring channels on, `target_rate` gives a ConvNet-AIG-style aux loss
  `(mean keep - target_rate)^2` to steer the cost.
- `FBSGate` (Gao et al., "Dynamic Channel Pruning: Feature Boosting and Suppression",
  ICLR 2019): saliency `s = relu(fc(mean |x|))`; winner-take-all keeps the `k =
  ceil(density * C_out)` most salient channels of every sample and boosts each kept
  channel by its saliency (the others are suppressed to 0). Aux loss: the L1 norm of `s`.

The gates only decide (`ChannelDecision`); `channel_gated_conv` executes.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .gumbel import gumbel_sigmoid
from ..flops import linear_flops


class ChannelDecision(NamedTuple):
    """What a channel gate decided for a batch.

    Attributes:
        keep: `(B, C_out)` exactly 0/1, which channels each sample runs (straight-through
            gradient for the Gumbel gate while training).
        scale: `(B, C_out)` factor on each output channel, zero wherever `keep` is: `keep`
            itself (Gumbel) or `keep * saliency` (FBS). The execution layer takes this.
        scores: `(B, C_out)` the gate's raw scores: log-odds (Gumbel) or saliency (FBS).
        max_kept: `k` when every sample keeps at most `k` channels by construction (FBS),
            else None (the execution layer then reads the count from the decisions).
    """

    keep: Tensor
    scale: Tensor
    scores: Tensor
    max_kept: int | None


def pooled_descriptor(x: Tensor, absolute: bool = False) -> Tensor:
    """`(B, C, *S) -> (B, C)`: the mean over the spatial axes (of `|x|` if `absolute`)."""
    return (x.abs() if absolute else x).mean(dim=tuple(range(2, x.dim())))


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """`(B, C)` scores -> `(B, C)` 0/1 mask (scores' dtype) of each row's `k` largest."""
    mask = torch.zeros_like(scores)
    if k == 0:
        return mask
    return mask.scatter_(1, scores.topk(k, dim=1).indices, 1.0)


def check_positive_ints(owner: str, **values: int) -> None:
    """Raise `ConfigError` naming `owner` and the key of the first value that is not an int >= 1."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{owner}: {key} must be a positive int, got {value!r}")


class _PooledLinearScorer(nn.Module):
    """`Linear(C_in, C_out)` on a pooled descriptor; the gates below share it."""

    def __init__(self, owner, in_chans, out_chans, bias_init, device, dtype) -> None:
        super().__init__()
        check_positive_ints(owner, in_chans=in_chans, out_chans=out_chans)
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.fc = nn.Linear(in_chans, out_chans, device=device, dtype=dtype)
        nn.init.constant_(self.fc.bias, bias_init)

    def check_input(self, x: Tensor) -> None:
        if x.dim() < 3 or x.shape[1] != self.in_chans:
            raise ConfigError(
                f"{type(self).__name__}: x must be (B, in_chans={self.in_chans}, *spatial), "
                f"got {tuple(x.shape)}"
            )

    def flops(self) -> int:
        """Per-sample FLOPs of the gate (the linear layer; pooling is free)."""
        return linear_flops(self.fc)


class GumbelChannelGate(_PooledLinearScorer):
    """Per-sample, per-channel keep decisions from Gumbel-sigmoid samples.

    Args:
        in_chans: channels of the features the gate reads (the conv's input).
        out_chans: channels it decides on (the conv's output).
        tau: Gumbel temperature while training, `> 0`.
        min_keep: every sample keeps at least this many channels (its highest logits),
            in `[0, out_chans]`; 1 keeps every sample's block from collapsing to nothing.
        target_rate: keep rate in `[0, 1]` the aux loss pulls toward, or None (no loss).
        bias_init: initial logit bias (2.0: about 88% of the channels kept at first).

    Shapes:
        `forward(x (B, in_chans, *S)) -> ChannelDecision` with `(B, out_chans)` tensors,
        `max_kept=None`.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        *,
        tau: float = 1.0,
        min_keep: int = 1,
        target_rate: float | None = None,
        bias_init: float = 2.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__("GumbelChannelGate", in_chans, out_chans, bias_init, device, dtype)
        if not (isinstance(tau, (int, float)) and tau > 0):
            raise ConfigError(f"GumbelChannelGate: tau must be > 0, got {tau!r}")
        is_int = isinstance(min_keep, int) and not isinstance(min_keep, bool)
        if not is_int or not 0 <= min_keep <= out_chans:
            raise ConfigError(
                f"GumbelChannelGate: min_keep must be an int in [0, out_chans={out_chans}], "
                f"got {min_keep!r}"
            )
        if target_rate is not None and not (
            isinstance(target_rate, (int, float)) and 0.0 <= target_rate <= 1.0
        ):
            raise ConfigError(
                f"GumbelChannelGate: target_rate must be in [0, 1] or None, got {target_rate!r}"
            )
        self.tau = float(tau)
        self.min_keep = min_keep
        self.target_rate = None if target_rate is None else float(target_rate)

    def forward(
        self, x: Tensor, tau: float | None = None, generator: torch.Generator | None = None,
        threshold: float = 0.0,
    ) -> ChannelDecision:
        """Keep decisions for the output channels of each sample.

        Args:
            x: `(B, in_chans, *S)` the gated conv's input.
            tau: temperature for this call (None: `self.tau`); unused in eval.
            generator: optional `torch.Generator` for reproducible training noise.
            threshold: the eval rule, keep a channel where its logit is `> threshold`
                (a model passes its `GatePolicy` here); unused in training.

        Returns:
            `ChannelDecision` (`scale` is `keep`).
        """
        self.check_input(x)
        logits = self.fc(pooled_descriptor(x))
        forced = top_k_mask(logits.detach(), self.min_keep)
        if self.training:
            keep = gumbel_sigmoid(logits, self.tau if tau is None else tau, True, 0.5, generator)
            # forced channels become 1; the value stays exactly 0/1, the gradient is keep's
            keep = keep + forced * (1 - keep.detach())
        else:
            keep = torch.maximum((logits > threshold).to(logits.dtype), forced)
        return ChannelDecision(keep, keep, logits, None)

    def aux_loss(self, decision: ChannelDecision) -> Tensor:
        """`(mean keep - target_rate)^2` over the batch and channels (0 without a target)."""
        if self.target_rate is None:
            return decision.keep.new_zeros(())
        return (decision.keep.mean() - self.target_rate).square()

    def extra_repr(self) -> str:
        return (
            f"{self.in_chans}, {self.out_chans}, tau={self.tau}, min_keep={self.min_keep}, "
            f"target_rate={self.target_rate}"
        )


class FBSGate(_PooledLinearScorer):
    """Feature boosting and suppression: keep the `k` most salient channels, boosted.

    `s = relu(fc(mean_{spatial} |x|))`; `keep` marks each sample's top-`k` of `s` (ties
    broken by `topk`), `scale = keep * s`. The same in training and eval; `s` gets its
    gradient through the boost and the L1 aux loss.

    Args:
        in_chans, out_chans: as `GumbelChannelGate`.
        density: fraction of the output channels kept, in `(0, 1]`;
            `k = ceil(density * out_chans)`.
        bias_init: initial saliency bias (1.0: boosts near 1, the static network at first).

    Shapes:
        `forward(x (B, in_chans, *S)) -> ChannelDecision` with `(B, out_chans)` tensors,
        `max_kept=k`.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        *,
        density: float = 0.5,
        bias_init: float = 1.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__("FBSGate", in_chans, out_chans, bias_init, device, dtype)
        is_number = isinstance(density, (int, float)) and not isinstance(density, bool)
        if not is_number or not 0 < density <= 1:
            raise ConfigError(f"FBSGate: density must be in (0, 1], got {density!r}")
        self.density = float(density)
        # the small tolerance keeps e.g. 0.3 * 10 = 3.0000000000000004 at 3
        self.k = min(out_chans, max(1, math.ceil(self.density * out_chans - 1e-9)))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> ChannelDecision:
        """`x (B, in_chans, *S)` -> `ChannelDecision` (`scores` is the saliency `s`).

        `generator` is unused (the gate is deterministic); it is accepted so that any
        channel gate can be called the same way.
        """
        self.check_input(x)
        saliency = torch.relu(self.fc(pooled_descriptor(x, absolute=True)))
        keep = top_k_mask(saliency.detach(), self.k)
        return ChannelDecision(keep, keep * saliency, saliency, self.k)

    def aux_loss(self, decision: ChannelDecision) -> Tensor:
        """L1 penalty on the saliency: `mean |s|` over the batch and channels."""
        return decision.scores.abs().mean()

    def extra_repr(self) -> str:
        return f"{self.in_chans}, {self.out_chans}, density={self.density}, k={self.k}"
