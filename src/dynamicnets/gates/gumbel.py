"""Gumbel-softmax and Gumbel-sigmoid: differentiable samples of discrete decisions.

A categorical choice `z = one_hot(argmax_i [log pi_i + g_i])` with Gumbel noise `g_i`
is an exact sample of `Categorical(pi)`; replacing the argmax with a softmax at
temperature `tau` makes it differentiable (Jang et al. 2017; Maddison et al. 2017).
The binary case uses the difference of two Gumbels, i.e. logistic noise.

With `hard=True` the forward value is the exact discrete decision and the gradient is
that of the relaxed sample (straight-through). Given a `torch.Generator` every draw is
reproducible; with `noise=False` the decision is deterministic (argmax / threshold),
which is what inference uses.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def _check_tau(tau: float) -> None:
    if not tau > 0:
        raise ConfigError(f"Gumbel temperature tau must be > 0, got {tau!r}")


def _noise_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision uniforms are too coarse for the log-log tails; draw in >= float32.
    return torch.promote_types(dtype, torch.float32)


def _uniform_open(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform draws strictly inside (0, 1), shaped like `like`, in >= float32."""
    dtype = _noise_dtype(like.dtype)
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=dtype)
    eps = torch.finfo(dtype).eps
    return u.clamp(eps, 1.0 - eps)


def sample_gumbel(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel(0, 1) noise.

    Args:
        like: any tensor; only its shape, device and dtype are used.
        generator: optional `torch.Generator` (on `like`'s device) for reproducible draws.

    Returns:
        Noise of `like`'s shape, in `like`'s dtype promoted to at least float32.
    """
    return -torch.log(-torch.log(_uniform_open(like, generator)))


def sample_logistic(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard logistic noise `log u - log(1 - u)` (the difference of two Gumbels).

    Args:
        like: any tensor; only its shape, device and dtype are used.
        generator: optional `torch.Generator` for reproducible draws.

    Returns:
        Noise of `like`'s shape, in `like`'s dtype promoted to at least float32.
    """
    u = _uniform_open(like, generator)
    return torch.log(u) - torch.log1p(-u)


def _straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    # `soft - soft.detach()` is exactly zero, so the value is exactly `hard`
    # (unlike `hard - soft.detach() + soft`, which can be off by one ulp).
    return hard + (soft - soft.detach())


def gumbel_softmax(
    logits: Tensor,
    tau: float = 1.0,
    hard: bool = False,
    generator: torch.Generator | None = None,
    dim: int = -1,
    noise: bool = True,
) -> Tensor:
    """Relaxed (or straight-through hard) sample of a categorical decision.

    Args:
        logits: `(..., K, ...)` unnormalised log-probabilities; `dim` indexes the `K`
            choices.
        tau: temperature `> 0`; small values make the relaxed sample nearly one-hot.
        hard: if `True` the value is an exact one-hot of the argmax of the (noisy)
            logits and the gradient is the relaxed sample's (straight-through).
        generator: optional `torch.Generator` on `logits`' device; the same generator
            state gives the same sample.
        dim: the dimension of the choices.
        noise: if `False` no Gumbel noise is added: the result is the deterministic
            `softmax(logits / tau)`, or with `hard=True` the one-hot argmax of `logits`.

    Returns:
        Tensor of `logits`' shape and dtype. Soft: non-negative, summing to 1 along `dim`.
        Hard: exactly one 1 along `dim`, 0 elsewhere.
    """
    _check_tau(tau)
    scores = logits + sample_gumbel(logits, generator) if noise else logits
    soft = torch.softmax(scores / tau, dim=dim).to(logits.dtype)
    if not hard:
        return soft
    index = scores.argmax(dim=dim, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return _straight_through(one_hot, soft)


def gumbel_sigmoid(
    logits: Tensor,
    tau: float = 1.0,
    hard: bool = False,
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
    noise: bool = True,
    noise_scale: float = 1.0,
) -> Tensor:
    """Relaxed (or straight-through hard) sample of independent binary decisions.

    The relaxed value is `sigmoid((logits + l) / tau)` with logistic noise `l`; with
    `threshold=0.5` the hard decision is 1 with probability `sigmoid(logits)`.

    Args:
        logits: `(...)` log-odds of each gate being on.
        tau: temperature `> 0`.
        hard: if `True` the value is exactly `1.0` where the relaxed sample exceeds
            `threshold` and `0.0` elsewhere, with the relaxed sample's gradient.
        threshold: in `(0, 1)`; the cut applied to the relaxed sample when `hard`.
        generator: optional `torch.Generator` for reproducible draws.
        noise: if `False` no noise is added (`sigmoid(logits / tau)`, or its threshold).
        noise_scale: `>= 0`, multiplies the logistic noise (1: the Gumbel-sigmoid sample;
            annealing it toward 0 makes the hard training decisions converge to the
            inference rule `logit > 0`).

    Returns:
        Tensor of `logits`' shape and dtype, in `[0, 1]` (soft) or in `{0, 1}` (hard).
    """
    _check_tau(tau)
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"gumbel_sigmoid threshold must be in (0, 1), got {threshold!r}")
    if not noise_scale >= 0:
        raise ConfigError(f"gumbel_sigmoid noise_scale must be >= 0, got {noise_scale!r}")
    use_noise = noise and noise_scale > 0
    scores = logits + noise_scale * sample_logistic(logits, generator) if use_noise else logits
    soft = torch.sigmoid(scores / tau).to(logits.dtype)
    if not hard:
        return soft
    return _straight_through((soft > threshold).to(soft.dtype), soft)


class GumbelSoftmaxGate(nn.Module):
    """Categorical gate: turns `(..., K)` logits into one-hot (or relaxed) decisions.

    While training it samples with Gumbel noise; in eval mode it is deterministic
    (argmax). The module has no parameters and never changes state in `forward`.

    Args:
        tau: default temperature `> 0` (a schedule can pass another per call).
        hard: straight-through one-hot while training if `True`, relaxed sample if
            `False`.
        hard_eval: in eval mode, return the one-hot argmax if `True` (the discrete
            decision inference needs to save compute), else `softmax(logits / tau)`.
        dim: the dimension of the `K` choices.
    """

    def __init__(self, tau: float = 1.0, hard: bool = True, hard_eval: bool = True, dim: int = -1):
        super().__init__()
        _check_tau(tau)
        self.tau = float(tau)
        self.hard = hard
        self.hard_eval = hard_eval
        self.dim = dim

    def forward(
        self, logits: Tensor, tau: float | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Sample (training) or take (eval) the categorical decisions.

        Args:
            logits: `(..., K)` choice logits (choices along `self.dim`).
            tau: temperature for this call; `None` uses `self.tau`.
            generator: optional `torch.Generator` for reproducible training draws.

        Returns:
            `(..., K)` decisions (see `gumbel_softmax`).
        """
        tau = self.tau if tau is None else tau
        if self.training:
            return gumbel_softmax(logits, tau, self.hard, generator, self.dim, noise=True)
        return gumbel_softmax(logits, tau, self.hard_eval, None, self.dim, noise=False)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, hard={self.hard}, hard_eval={self.hard_eval}, dim={self.dim}"


class GumbelSigmoidGate(nn.Module):
    """Binary gate: turns `(...)` log-odds into 0/1 (or relaxed) decisions.

    While training it samples with logistic noise; in eval mode it is deterministic
    (`sigmoid(logits / tau) > threshold`). No parameters, no state changed in `forward`.

    Args:
        tau: default temperature `> 0`.
        hard: straight-through 0/1 while training if `True`, relaxed sample if `False`.
        threshold: in `(0, 1)`, the cut on the relaxed value.
        hard_eval: in eval mode return exact 0/1 if `True`, else `sigmoid(logits / tau)`.
    """

    def __init__(
        self, tau: float = 1.0, hard: bool = True, threshold: float = 0.5, hard_eval: bool = True
    ):
        super().__init__()
        _check_tau(tau)
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"GumbelSigmoidGate threshold must be in (0, 1), got {threshold!r}")
        self.tau = float(tau)
        self.hard = hard
        self.threshold = float(threshold)
        self.hard_eval = hard_eval

    def forward(
        self, logits: Tensor, tau: float | None = None, generator: torch.Generator | None = None,
        noise_scale: float = 1.0,
    ) -> Tensor:
        """Sample (training) or take (eval) the binary decisions.

        Args:
            logits: `(...)` gate log-odds.
            tau: temperature for this call; `None` uses `self.tau`.
            generator: optional `torch.Generator` for reproducible training draws.
            noise_scale: scale of the training noise for this call (see `gumbel_sigmoid`).

        Returns:
            `(...)` decisions (see `gumbel_sigmoid`).
        """
        tau = self.tau if tau is None else tau
        if self.training:
            return gumbel_sigmoid(logits, tau, self.hard, self.threshold, generator, noise=True,
                                  noise_scale=noise_scale)
        return gumbel_sigmoid(logits, tau, self.hard_eval, self.threshold, None, noise=False)

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, hard={self.hard}, threshold={self.threshold}, "
            f"hard_eval={self.hard_eval}"
        )
