"""Learned stopping over a sequence of checks: training the halting probabilities as an
optimal-stopping problem, and the deterministic rule used at inference.

At checks `k = 0..K-2` a halting unit gives `lambda_k` in `(0, 1)`, the probability of
stopping there if the sample is still reading; the last check stops every sample. Stopping
at check `k` costs `c_k` (per sample; e.g. "the answer differs from the full read's" plus a
price on the steps read). Reading on from check `k` costs, under the current decisions,

    V_{K-1} = c_{K-1},      V_k = lambda_k c_k + (1 - lambda_k) V_{k+1}

(`V_0` is the expected cost of the whole policy). Each `lambda_k` is trained to compare
stopping with reading on, as in Deep Optimal Stopping (Becker, Cheridito, Jentzen, JMLR
2019): `stopping_loss = mean_b mean_{k < K-1} lambda_k c_k + (1 - lambda_k) sg(V_{k+1})`,
whose gradient in `lambda_k` is `(c_k - V_{k+1}) / (K - 1)`: push towards stopping where it
is cheaper than going on (the mean over checks keeps the loss, and what it sends into a
shared state, of the size of one decision however many checks there are). Unlike the gradient of `V_0` itself, it is not scaled by the probability of
still reading at `k`, so a decision that stops everyone early (as happens while the heads
are still untrained) does not starve the later checks of signal, and is undone once reading
on becomes cheaper.

At inference a sample stops at the first check where `lambda_k` exceeds that check's
threshold (`first_stop`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def continuation_costs(halt_probs: Tensor, stop_costs: Tensor) -> Tensor:
    """Expected cost of reading on from each check under the current decisions.

    Args:
        halt_probs: `(B, K - 1)` halting probabilities `lambda_k`.
        stop_costs: `(B, K)` cost `c_k` of stopping at each check.

    Returns:
        `(B, K)` `V_k` (see the module docstring); `V_0` is the expected cost.
    """
    values = [stop_costs[:, -1]]
    for k in range(halt_probs.shape[1] - 1, -1, -1):
        lam = halt_probs[:, k]
        values.append(lam * stop_costs[:, k] + (1 - lam) * values[-1])
    return torch.stack(values[::-1], dim=1)


def stopping_loss(halt_probs: Tensor, stop_costs: Tensor) -> Tensor:
    """`mean_b mean_{k < K-1} lambda_k c_k + (1 - lambda_k) sg(V_{k+1})` (module docstring).

    Args:
        halt_probs: `(B, K - 1)` halting probabilities (with gradient).
        stop_costs: `(B, K)` costs of stopping at each check (treated as constants).

    Returns:
        `()` scalar in the dtype of `halt_probs` (0 with a single check).
    """
    if halt_probs.shape[1] == 0:
        return halt_probs.sum()
    costs = stop_costs.detach().to(halt_probs.dtype)
    with torch.no_grad():
        later = continuation_costs(halt_probs, costs)[:, 1:]  # V_{k+1}, (B, K - 1)
    return (halt_probs * costs[:, :-1] + (1 - halt_probs) * later).mean()


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
