"""Early-exit criteria: how sure an exit is, and whether a sample may leave there.

Every score is "higher = more confident", so every criterion exits where
`score >= threshold` and a budget calibrator can search thresholds the same way for all:

- `maxprob`: the largest softmax probability, in `[1/C, 1]`.
- `entropy`: `1 - H(p) / log C`, in `[0, 1]` (1 = one-hot, 0 = uniform).
- `margin`: top-1 minus top-2 softmax probability, in `[0, 1]`.
- `patience`: how many exits in a row (ending at the latest) gave the same answer
  (PABEE, Zhou et al. 2020). It reads the history of predictions passed in explicitly.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"confidence scores need (B, C) logits, got shape {tuple(logits.shape)}")


def _probs(logits: Tensor) -> Tensor:
    _check_logits(logits)
    return torch.softmax(logits.float(), dim=-1)


def max_probability(logits: Tensor) -> Tensor:
    """Largest softmax probability.

    Args:
        logits: `(B, C)` class logits.

    Returns:
        `(B,)` float32 in `[1/C, 1]`.
    """
    return _probs(logits).max(dim=-1).values


def entropy_confidence(logits: Tensor) -> Tensor:
    """Normalised negative entropy `1 - H(p) / log C` of `p = softmax(logits)`.

    Args:
        logits: `(B, C)` class logits.

    Returns:
        `(B,)` float32 in `[0, 1]`: 0 for a uniform `p`, 1 for a one-hot `p` (and always 1
        when `C = 1`).
    """
    _check_logits(logits)
    log_p = torch.log_softmax(logits.float(), dim=-1)
    num_classes = logits.shape[-1]
    if num_classes == 1:
        return torch.ones(logits.shape[0], device=logits.device)
    # 0 * log 0 = 0: clamp the -inf of underflowed classes before multiplying.
    log_p = log_p.clamp(min=torch.finfo(log_p.dtype).min)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    return (1.0 - entropy / math.log(num_classes)).clamp(0.0, 1.0)


def score_margin(logits: Tensor) -> Tensor:
    """Difference between the two largest softmax probabilities.

    Args:
        logits: `(B, C)` class logits.

    Returns:
        `(B,)` float32 in `[0, 1]` (1 when `C = 1`).
    """
    probs = _probs(logits)
    if probs.shape[-1] == 1:
        return torch.ones(probs.shape[0], device=probs.device)
    top2 = probs.topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


def _as_predictions(entry: Tensor) -> Tensor:
    """A history entry is either `(B,)` predictions or `(B, C)` logits."""
    if entry.dim() == 2:
        return entry.argmax(dim=-1)
    if entry.dim() == 1:
        return entry
    raise ValueError(
        f"patience history entries must be (B,) predictions or (B, C) logits, "
        f"got shape {tuple(entry.shape)}"
    )


def agreement_streaks(history: Sequence[Tensor]) -> Tensor:
    """Length of the run of identical predictions ending at each exit.

    Args:
        history: `E` tensors, one per exit (shallowest first), each `(B,)`
            predictions or `(B, C)` logits (then argmax is taken).

    Returns:
        `(E, B)` int64: `streaks[e, b]` is how many consecutive exits up to and including
        `e` predicted the same class as exit `e` for sample `b` (at least 1).
    """
    if len(history) == 0:
        raise ValueError("patience needs a non-empty history of per-exit predictions")
    preds = torch.stack([_as_predictions(h) for h in history])
    streaks = torch.ones(preds.shape, dtype=torch.int64, device=preds.device)
    for e in range(1, preds.shape[0]):
        same = preds[e] == preds[e - 1]
        streaks[e] = torch.where(same, streaks[e - 1] + 1, torch.ones_like(streaks[e]))
    return streaks


def _check_patience(k: int) -> int:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ConfigError(f"patience k must be an integer >= 1, got {k!r}")
    return int(k)


class Patience:
    """First exit at which the prediction has been the same for `k` exits in a row.

    With `k = 1` every sample exits at exit 0. PABEE's patience `t` ("unchanged `t`
    times") is `k = t + 1` here.

    Args:
        k: number of consecutive exits that must agree, `>= 1`.
    """

    def __init__(self, k: int):
        self.k = _check_patience(k)

    def __call__(self, history: Sequence[Tensor]) -> Tensor:
        """First exit at which the last `k` exits agree, per sample.

        Args:
            history: `E` per-exit `(B,)` predictions (or `(B, C)` logits), shallowest first.

        Returns:
            `(B,)` int64 index of the first exit `e` where exits `e-k+1 .. e` agree, or
            `-1` where that never happens within the history.
        """
        reached = agreement_streaks(history) >= self.k  # (E, B)
        first = reached.to(torch.int64).argmax(dim=0)  # first True (0 when none)
        return torch.where(reached.any(dim=0), first, torch.full_like(first, -1))

    def __repr__(self) -> str:
        return f"Patience(k={self.k})"


class ExitCriterion:
    """Common interface: `score(...) -> (B,)`, higher = more confident, and
    `should_exit(..., threshold) -> (B,) bool`, true where `score >= threshold`.

    Criteria with `uses_history = False` take the current exit's `(B, C)` logits;
    those with `uses_history = True` take the list of every exit's outputs so far.
    """

    name: str = ""
    uses_history: bool = False

    def score(self, logits: Tensor) -> Tensor:
        raise NotImplementedError

    def should_exit(self, logits: Tensor, threshold: float) -> Tensor:
        """Whether each sample's score reaches `threshold`.

        Args:
            logits: `(B, C)` logits of the current exit.
            threshold: minimum score needed to exit.

        Returns:
            `(B,)` bool, true for the samples that may exit here.
        """
        return self.score(logits) >= threshold

    def flops_per_sample(self) -> int:
        """FLOPs one decision costs per sample at one exit, as `FlopCounterMode` counts
        them (0 for the fixed scores: softmax and sorting are not counted)."""
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MaxProbCriterion(ExitCriterion):
    """Exit where the top softmax probability reaches the threshold (see `max_probability`)."""

    name = "maxprob"

    def score(self, logits: Tensor) -> Tensor:
        """Largest softmax probability of each sample.

        Args:
            logits: `(B, C)`.

        Returns:
            `(B,)` max probability.
        """
        return max_probability(logits)


class EntropyCriterion(ExitCriterion):
    """Exit where `1 - H/log C` reaches the threshold (see `entropy_confidence`)."""

    name = "entropy"

    def score(self, logits: Tensor) -> Tensor:
        """Normalised negative entropy of each sample.

        Args:
            logits: `(B, C)`.

        Returns:
            `(B,)` normalised negative entropy.
        """
        return entropy_confidence(logits)


class MarginCriterion(ExitCriterion):
    """Exit where top-1 minus top-2 probability reaches the threshold (see `score_margin`)."""

    name = "margin"

    def score(self, logits: Tensor) -> Tensor:
        """Top-1 minus top-2 softmax probability of each sample.

        Args:
            logits: `(B, C)`.

        Returns:
            `(B,)` probability margin.
        """
        return score_margin(logits)


class PatienceCriterion(ExitCriterion):
    """Exit once the last `threshold` exits (including the current one) agree.

    Stateless: the caller passes the whole history of exits reached so far, so
    nothing is remembered between calls.
    """

    name = "patience"
    uses_history = True

    def score(self, history_preds: Sequence[Tensor]) -> Tensor:
        """Length of the run of agreeing exits ending at the current one.

        Args:
            history_preds: per-exit `(B,)` predictions (or `(B, C)` logits) for the
                exits reached so far, shallowest first; the last one is the current exit.

        Returns:
            `(B,)` float32 length of the run of agreeing exits ending at the current one.
        """
        return agreement_streaks(history_preds)[-1].float()

    def should_exit(self, history_preds: Sequence[Tensor], threshold: float) -> Tensor:
        """Whether the last `threshold` exits agree, per sample.

        Args:
            history_preds: as for `score`.
            threshold: `k`, the number of consecutive agreeing exits needed (`>= 1`).

        Returns:
            `(B,)` bool, true where the last `k` exits agree.
        """
        return self.score(history_preds) >= _check_patience(threshold)


_CRITERIA = MappingProxyType(
    {
        "maxprob": MaxProbCriterion,
        "entropy": EntropyCriterion,
        "margin": MarginCriterion,
        "patience": PatienceCriterion,
    }
)


def list_criteria() -> list[str]:
    """Sorted names accepted by `get_criterion`."""
    return sorted(_CRITERIA)


def get_criterion(name: str) -> ExitCriterion:
    """Build the exit criterion called `name`.

    Args:
        name: one of `"entropy"`, `"margin"`, `"maxprob"`, `"patience"`.

    Returns:
        A new `ExitCriterion`.

    Raises:
        ConfigError: naming the valid criteria when `name` is unknown, and telling how to
            build a `"learned"` criterion (it must be fitted: `fit_learned_exit`).
    """
    if name == "learned":
        raise ConfigError(
            "exit criterion 'learned' has weights to fit first: call "
            "dynamicnets.gates.fit_learned_exit(exit_logits, targets) on a validation split and pass "
            "the instance it returns as ExitPolicy(criterion=instance, ...) (or reload a saved one "
            "with LearnedExitCriterion.from_state_dict)"
        )
    if not isinstance(name, str) or name not in _CRITERIA:
        raise ConfigError(
            f"unknown exit criterion {name!r}; expected one of: {', '.join(list_criteria())}"
        )
    return _CRITERIA[name]()
