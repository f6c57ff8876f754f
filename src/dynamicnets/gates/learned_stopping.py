"""Learned stopping over a sequence of checks: per-check halting probabilities, the
distribution of the check a sample stops at, and the deterministic rule used at inference.

At checks `k = 0..K-2` a halting unit gives `lambda_k` in `(0, 1)`, the probability of
stopping there given that the sample has not stopped before; the last check stops every
sample (`lambda_{K-1} = 1`). The stopping distribution is PonderNet's (Banino, Balaguer,
Blundell, "PonderNet: Learning to Ponder", 2021):

    q_k = lambda_k * prod_{j < k} (1 - lambda_j),      q_{K-1} = prod_{j < K-1} (1 - lambda_j)

so that `sum_k q_k = 1` and an expected loss `sum_k q_k * loss_k` is differentiable in
every `lambda`. At inference a sample stops at the first check where `lambda_k` exceeds
that check's threshold (`first_stop`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def stop_distribution(halt_probs: Tensor) -> Tensor:
    """Probability of stopping at each check.

    Args:
        halt_probs: `(B, K - 1)` halting probabilities `lambda_k` of the checks before the
            last (`K - 1 = 0` columns: a single check).

    Returns:
        `(B, K)` in the dtype of `halt_probs`, rows summing to 1.
    """
    batch = halt_probs.shape[0]
    ones = halt_probs.new_ones(batch, 1)
    # survival before check k: prod_{j<k} (1 - lambda_j), with the empty product 1 at k = 0
    survival = torch.cumprod(torch.cat([ones, 1 - halt_probs], dim=1), dim=1)  # (B, K)
    return survival * torch.cat([halt_probs, ones], dim=1)


def first_stop(halt_probs: Tensor, thresholds: Sequence[float], last: int | None = None) -> Tensor:
    """The first check where `lambda_k > thresholds[k]`, else `last`.

    Args:
        halt_probs: `(B, K - 1)` halting probabilities.
        thresholds: `K - 1` numbers (`+inf` closes a check).
        last: the check every sample still reading stops at (a compute cap), `<= K - 1`;
            default `K - 1`.

    Returns:
        `(B,)` int64 check index in `0..last`.
    """
    batch, checks = halt_probs.shape
    last = checks if last is None else int(last)
    stops = torch.full((batch,), last, dtype=torch.int64, device=halt_probs.device)
    if last == 0:
        return stops
    limits = torch.tensor([float(t) for t in thresholds[:last]], dtype=halt_probs.dtype, device=halt_probs.device)
    over = halt_probs[:, :last] > limits  # (B, last)
    first = over.to(torch.int64).argmax(dim=1)  # first True, 0 when none
    return torch.where(over.any(dim=1), first, stops)
