"""Per-token halting of adaptive-token transformers (A-ViT: Yin, Vahdat, Alvarez, Mallya,
Kautz, Molchanov, "A-ViT: Adaptive Tokens for Efficient Vision Transformer", CVPR 2022).

After every block each token scores how ready it is to stop from its own first embedding
channel, with no parameters of its own (the network learns to write the score there):
`h = sigmoid(scale * t[0] + shift)`. A token's scores add up block after block and the
token halts at the first block `N` where the sum reaches `1 - eps`; after the last block
every token halts (`h = 1` there). ACT's remainder is `R = 1 - sum_{l < N} h_l`, and the
halting mass of block `l` is `h_l` while the token runs, `R` at `N`, 0 after (it sums to 1
over the blocks). Training terms:

- ponder cost `N + R` per token (`ponder_cost`), whose gradient reaches the scores
  through `R`;
- the distributional prior (`depth_prior`, `prior_kl`): the batch's halting-depth
  distribution (the mean halting mass per block, `halting_distribution`) is pulled
  toward a Gaussian over the blocks centred at a target depth, `KL(prior || q)`.

`HaltingPolicy` is the inference rule: the `eps` of the threshold `1 - eps`, and how a
batch whose samples keep different numbers of tokens is run.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..layers.token_batching import TokenBatching, parse_token_batching


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class HaltingPolicy:
    """When a token halts at inference, and how ragged batches run.

    Attributes:
        eps: a token halts once its cumulative halting score reaches `1 - eps`; in
            `[0, 1]` (1 halts every token after the first block, 0 runs a token until its
            scores sum to 1 or the last block).
        token_batching: how samples that keep different numbers of tokens share a batch
            (`"pack"`, `"pad"` or `"bucket"`, see `dynamicnets.layers.token_batching`).

    Raises:
        ConfigError: `eps` outside `[0, 1]`, an unknown batching.
    """

    eps: float = 0.01
    token_batching: TokenBatching | str = TokenBatching.PACK

    def __post_init__(self) -> None:
        if not (_is_real(self.eps) and 0 <= self.eps <= 1):
            raise ConfigError(f"HaltingPolicy: eps must be a number in [0, 1] (a token halts once its "
                              f"cumulative halting score reaches 1 - eps), got {self.eps!r}")
        object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "token_batching", parse_token_batching(self.token_batching))

    @property
    def threshold(self) -> float:
        """`1 - eps`: the cumulative score at which a token halts."""
        return 1.0 - self.eps


def token_halting_scores(tokens: Tensor, scale: float, shift: float) -> Tensor:
    """A-ViT's halting score of every token, from its first channel.

    Args:
        tokens: `(..., D)` block outputs.
        scale: `gamma`, the slope on the first channel.
        shift: `beta`, the offset (negative: halting starts late).

    Returns:
        `(...)` scores `sigmoid(scale * tokens[..., 0] + shift)` in `(0, 1)`.
    """
    return torch.sigmoid(tokens[..., 0] * scale + shift)


def ponder_cost(count: Tensor, remainder: Tensor) -> Tensor:
    """Mean ponder cost `N + R` per sample.

    Args:
        count: `(B, N)` blocks each token ran (its halting block included).
        remainder: `(B, N)` each token's remainder `R`.

    Returns:
        `(B,)` the mean over the tokens of `count + remainder`.
    """
    return (count + remainder).mean(dim=1)


def halting_distribution(masses: Sequence[Tensor]) -> Tensor:
    """The batch's halting-depth distribution: the mean halting mass of each block.

    Args:
        masses: one `(B, N)` tensor per block, the halting mass of each token there (`h`
            while running, `R` at its halting block, 0 after).

    Returns:
        `(depth,)`, summing to 1 when every token halted by the last block.
    """
    return torch.stack([m.mean() for m in masses])


def depth_prior(depth: int, target_depth: float, std: float, *, device=None, dtype=None) -> Tensor:
    """A Gaussian over the blocks, normalised: the prior of the halting depth.

    Args:
        depth: number of blocks.
        target_depth: the number of blocks a token should run; the prior is centred at
            block index `target_depth - 1`.
        std: its standard deviation, in blocks.

    Returns:
        `(depth,)` probabilities of halting after block `0 .. depth - 1`.
    """
    blocks = torch.arange(depth, device=device, dtype=torch.float64)
    logits = -0.5 * ((blocks - (target_depth - 1)) / std) ** 2
    return torch.softmax(logits, dim=0).to(dtype or torch.get_default_dtype())


def prior_kl(distribution: Tensor, prior: Tensor) -> Tensor:
    """`KL(prior || distribution)` (A-ViT's distributional prior term).

    Args:
        distribution: `(depth,)` the halting-depth distribution of a batch.
        prior: `(depth,)` the target distribution.

    Returns:
        a scalar >= 0 (up to the floor of `1e-6` added inside the logs, which keeps
        blocks where no token halts finite, with bounded gradients).
    """
    prior = prior.to(distribution.dtype)
    return (prior * (torch.log(prior + 1e-6) - torch.log(distribution + 1e-6))).sum()
