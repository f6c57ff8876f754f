"""`TokenPolicy`: how many tokens a token-sparse transformer keeps at inference, and how it
batches samples that keep different numbers.

Token-pruning models (DynamicViT, EViT) score the tokens at each pruning stage; the
policy, not the model, says which scores survive:

- `keep_ratio`: keep the `ceil(ratio * n)` best-scored of the `n` patch tokens that enter
  a stage (the class token always stays). One number applies at every stage, so 0.7 at
  three stages keeps 70%, 49% and 34.3% of the patches (DynamicViT's rho, rho^2, rho^3);
  a sequence gives one ratio per stage. Every sample keeps the same count.
- `threshold`: keep the patch tokens whose keep score (a probability) is `> threshold`,
  at least `min_tokens` of them (the best-scored). Counts differ per sample: the batch
  is run by `token_batching`.

Exactly one of the two is given.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..layers.token_batching import TokenBatching, parse_token_batching


_CEIL_SLACK = 1e-9


def _per_stage(name: str, value, stages: int) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, Sequence) else (value,) * stages
    if len(values) != stages:
        raise ConfigError(f"TokenPolicy: {name} has {len(values)} entries but the model prunes at {stages} stages")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class TokenPolicy:
    """Which patch tokens a token-pruning model keeps at each pruning stage.

    Attributes:
        keep_ratio: in (0, 1], one for all stages or one per stage (fraction of the
            patch tokens entering the stage).
        threshold: in [0, 1), one for all stages or one per stage (keep score above it).
        min_tokens: the fewest patch tokens a sample keeps at a stage (>= 1).
        token_batching: how samples with different counts share a batch (`"pack"`,
            `"pad"` or `"bucket"`, see `dynamicnets.layers.token_batching`).

    Raises:
        ConfigError: neither or both of `keep_ratio` and `threshold`, a ratio outside
            (0, 1], a threshold outside [0, 1), `min_tokens < 1`, an unknown batching.
    """

    keep_ratio: float | Sequence[float] | None = None
    threshold: float | Sequence[float] | None = None
    min_tokens: int = 1
    token_batching: TokenBatching | str = TokenBatching.PACK

    def __post_init__(self) -> None:
        if (self.keep_ratio is None) == (self.threshold is None):
            raise ConfigError("TokenPolicy: give exactly one of keep_ratio and threshold")
        for name, low_open, high_open in (("keep_ratio", True, False), ("threshold", False, True)):
            value = getattr(self, name)
            if value is None:
                continue
            values = tuple(value) if isinstance(value, Sequence) else (value,)
            if not values:
                raise ConfigError(f"TokenPolicy: {name} is an empty sequence; give one value or one per stage")
            for v in values:
                bad = (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v)
                       or (v <= 0 if low_open else v < 0) or (v >= 1 if high_open else v > 1))
                if bad:
                    interval = "(0, 1]" if name == "keep_ratio" else "[0, 1)"
                    raise ConfigError(f"TokenPolicy: {name} must be in {interval}, got {value!r}")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 1:
            raise ConfigError(f"TokenPolicy: min_tokens must be an int >= 1, got {self.min_tokens!r}")
        object.__setattr__(self, "token_batching", parse_token_batching(self.token_batching))

    def keep_counts(self, scores: Tensor, stage: int, stages: int) -> Tensor:
        """How many patch tokens each sample keeps at `stage` (of `stages`).

        Args:
            scores: `(B, n)` keep scores of the `n` patch tokens entering the stage (for
                `threshold`, probabilities in [0, 1]); entries of tokens a sample no
                longer has are `-inf`.
            stage: index of the pruning stage, `0..stages-1`.
            stages: how many stages the model prunes at.

        Returns:
            `(B,)` int64 counts, each in `[min(min_tokens, available), available]`.
        """
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < stages:
            raise ConfigError(f"TokenPolicy: stage must be an int in [0, {stages}), got {stage!r}")
        available = torch.isfinite(scores).sum(dim=1)
        if self.keep_ratio is not None:
            ratio = _per_stage("keep_ratio", self.keep_ratio, stages)[stage]
            # less a hair, so that a product such as 0.7 * 10 = 7.000000000000001 keeps 7
            counts = torch.ceil(available.double() * ratio - _CEIL_SLACK).long()
        else:
            threshold = _per_stage("threshold", self.threshold, stages)[stage]
            counts = (scores > threshold).sum(dim=1)
        return torch.minimum(torch.clamp(counts, min=self.min_tokens), available)

    def fixed_count(self, available: int, stage: int, stages: int) -> int | None:
        """How many of `available` patch tokens every sample keeps at `stage`, as a Python
        int, when the policy keeps the same count for every sample (`keep_ratio`); None for
        a `threshold` policy. The count follows from the shape alone, so a forward built on
        it has static shapes and can be traced or exported."""
        if self.keep_ratio is None:
            return None
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < stages:
            raise ConfigError(f"TokenPolicy: stage must be an int in [0, {stages}), got {stage!r}")
        ratio = _per_stage("keep_ratio", self.keep_ratio, stages)[stage]
        return min(max(math.ceil(available * ratio - _CEIL_SLACK), self.min_tokens), available)

    def select_fixed(self, scores: Tensor, stage: int, stages: int) -> Tensor:
        """`(B, k)` int64: the positions (ascending) of the `k = fixed_count(n)` best of the
        `n` tokens scored by `scores (B, n)` (every entry finite), ties broken by position as
        in `select`. For keep-ratio policies only.

        Raises:
            ConfigError: a threshold policy (its counts differ per sample).
        """
        count = self.fixed_count(scores.shape[1], stage, stages)
        if count is None:
            raise ConfigError("TokenPolicy: a threshold policy keeps a different count per sample; "
                              "select_fixed needs keep_ratio")
        if not (torch.jit.is_tracing() or torch.compiler.is_exporting()):
            best = scores.argsort(dim=1, descending=True, stable=True)[:, :count]
            return best.sort(dim=1).values
        # traced: ranks from pairwise comparisons (O(n^2)), as ONNX has no stable sort and
        # saturated keep probabilities (exactly 1.0) do tie
        n = scores.shape[1]
        position = torch.arange(n, device=scores.device)
        other, this = scores[:, None, :], scores[:, :, None]
        ahead = (other > this) | ((other == this) & (position[None, :] < position[:, None]))
        kept = ahead.sum(dim=2) < count
        # the kept positions in ascending order: the largest `count` of the distinct n - j
        return torch.topk(kept.long() * (n - position), count, dim=1).indices

    def select(self, scores: Tensor, stage: int, stages: int) -> Tensor:
        """`(B, n)` bool: the patch tokens kept at `stage`, the best-scored `keep_counts` of
        each sample (ties broken by position)."""
        counts = self.keep_counts(scores, stage, stages)
        order = scores.argsort(dim=1, descending=True, stable=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
        return ranks < counts[:, None]
