"""`RaggedTokens`: a batch in which every sample keeps its own number of tokens.

The tokens of all samples are stored back to back in one `(T, D)` tensor, sample after
sample in batch order, with each sample's length; `T` is the sum of the lengths. This is
the state a token-sparse transformer carries between blocks at compact inference: the
linear layers of a block can run on all `T` rows at once, and `dynamicnets.layers.
token_batching` turns it into padded, packed or bucketed attention.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True)
class RaggedTokens:
    """Tokens of `B` samples, packed.

    Attributes:
        values: `(T, D)` the tokens, sample 0's first; within a sample, in their original
            order (a class token, when there is one, first).
        lengths: `B` ints, the tokens of each sample (each >= 1); `sum(lengths) == T`.
    """

    values: Tensor
    lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            raise ConfigError(f"RaggedTokens: values must be (T, D), got {tuple(self.values.shape)}")
        if any(n < 1 for n in self.lengths):
            raise ConfigError(f"RaggedTokens: every sample needs at least one token, got lengths {self.lengths}")
        if sum(self.lengths) != self.values.shape[0]:
            raise ConfigError(
                f"RaggedTokens: lengths sum to {sum(self.lengths)} but values hold {self.values.shape[0]} tokens"
            )

    @classmethod
    def from_dense(cls, x: Tensor) -> "RaggedTokens":
        """All `N` tokens of every sample of `x (B, N, D)`."""
        batch, tokens, dim = x.shape
        return cls(x.reshape(batch * tokens, dim), (tokens,) * batch)

    @classmethod
    def from_mask(cls, x: Tensor, keep: Tensor) -> "RaggedTokens":
        """The tokens of `x (B, N, D)` where `keep (B, N)` (bool) is True, in order.

        Raises:
            ConfigError: a sample that would keep no token.
        """
        if keep.shape != x.shape[:2] or keep.dtype != torch.bool:
            raise ConfigError(f"RaggedTokens.from_mask: keep must be bool {tuple(x.shape[:2])}, got "
                              f"{keep.dtype} {tuple(keep.shape)}")
        lengths = tuple(int(n) for n in keep.sum(dim=1).tolist())
        if any(n == 0 for n in lengths):
            empty = [i for i, n in enumerate(lengths) if n == 0]
            raise ConfigError(f"RaggedTokens.from_mask: samples {empty} keep zero tokens; every sample "
                              "needs at least one")
        return cls(x[keep], lengths)

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def dim(self) -> int:
        return self.values.shape[1]

    def _cached(self, name: str, make):
        # derived index tensors are built once per layout (the dataclass is frozen, so the
        # cache lives in the instance dict, out of the dataclass fields)
        cache = self.__dict__.setdefault("_index_cache", {})
        if name not in cache:
            cache[name] = make()
        return cache[name]

    def offsets(self) -> Tensor:
        """`(B + 1,)` int64: sample `i`'s tokens are rows `offsets[i]:offsets[i + 1]`."""
        return self._cached("offsets", lambda: torch.tensor(
            (0,) + self.lengths, dtype=torch.long, device=self.values.device).cumsum(0))

    def sample_ids(self) -> Tensor:
        """`(T,)` int64: the sample each row belongs to."""
        def make() -> Tensor:
            lengths = torch.tensor(self.lengths, dtype=torch.long, device=self.values.device)
            return torch.repeat_interleave(torch.arange(self.batch_size, device=self.values.device), lengths)
        return self._cached("sample_ids", make)

    @property
    def uniform(self) -> bool:
        """Whether every sample has the same number of tokens."""
        return min(self.lengths) == max(self.lengths)

    def with_values(self, values: Tensor) -> "RaggedTokens":
        """The same layout holding new `(T, D')` values."""
        return RaggedTokens(values, self.lengths)

    def split(self) -> tuple[Tensor, ...]:
        """One `(n_i, D)` view per sample."""
        return torch.split(self.values, list(self.lengths))

    def first_tokens(self) -> Tensor:
        """`(B, D)` the first token of every sample (the class token of a ViT)."""
        return self.values.index_select(0, self.offsets()[:-1])

    def mean_tokens(self) -> Tensor:
        """`(B, D)` each sample's mean over its tokens."""
        sums = self.values.new_zeros(self.batch_size, self.dim).index_add_(0, self.sample_ids(), self.values)
        counts = torch.tensor(self.lengths, dtype=self.values.dtype, device=self.values.device)
        return sums / counts[:, None]

    def select(self, keep: Tensor) -> "RaggedTokens":
        """The rows where `keep (T,)` (bool) is True, each sample keeping its kept rows.

        Raises:
            ConfigError: a sample would keep no token.
        """
        if keep.shape != (self.values.shape[0],) or keep.dtype != torch.bool:
            raise ConfigError(f"RaggedTokens.select: keep must be bool ({self.values.shape[0]},), got "
                              f"{keep.dtype} {tuple(keep.shape)}")
        counts = torch.zeros(self.batch_size, dtype=torch.long, device=keep.device)
        counts.index_add_(0, self.sample_ids(), keep.long())
        lengths = tuple(int(n) for n in counts.tolist())
        if any(n == 0 for n in lengths):
            raise ConfigError(f"RaggedTokens.select: samples {[i for i, n in enumerate(lengths) if n == 0]} "
                              "would keep zero tokens")
        return RaggedTokens(self.values[keep], lengths)

    def to_padded(self, length: int | None = None) -> tuple[Tensor, Tensor]:
        """`(B, L, D)` zero-padded tokens and the `(B, L)` bool mask of real ones, with
        `L = length` or the longest sample."""
        longest = max(self.lengths)
        length = longest if length is None else length
        if length < longest:
            raise ConfigError(f"RaggedTokens.to_padded: length {length} is shorter than the longest sample "
                              f"({longest} tokens)")
        lengths = torch.tensor(self.lengths, device=self.values.device)
        valid = torch.arange(length, device=self.values.device)[None, :] < lengths[:, None]
        padded = self.values.new_zeros(self.batch_size, length, self.dim)
        padded[valid] = self.values
        return padded, valid

    def index_of_samples(self, samples: Sequence[int]) -> Tensor:
        """`(sum n_s,)` int64 rows of `values` that belong to `samples`, in that order."""
        device = self.values.device
        if not samples:
            return torch.zeros(0, dtype=torch.long, device=device)
        chosen = torch.as_tensor(list(samples), dtype=torch.long, device=device)
        lengths = torch.tensor(self.lengths, dtype=torch.long, device=device).index_select(0, chosen)
        starts = self.offsets().index_select(0, chosen)
        # each chosen sample's rows: its start repeated, plus 0..n-1
        within = torch.arange(int(lengths.sum()), device=device) - torch.repeat_interleave(
            lengths.cumsum(0) - lengths, lengths)
        return torch.repeat_interleave(starts, lengths) + within
