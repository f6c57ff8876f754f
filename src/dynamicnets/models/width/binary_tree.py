"""Routing in a complete binary tree: path probabilities, hard paths, leaf mixtures.

The shared mechanism of `soft_decision_tree` and `neural_tree`. A tree of depth `d` has
`2^d - 1` inner nodes and `2^d` leaves, numbered in heap order: node `i` has children
`2i + 1` (left) and `2i + 2` (right); inner nodes are `0 .. 2^d - 2`, leaf `l` is node
`2^d - 1 + l`, so leaves run left to right. Each inner node routes a sample to the
right with probability `r_i` (a soft value, or a hard 0/1 decision).

- soft routing: a sample reaches leaf `l` with the product of the `r` / `1 - r` along its
  root-to-leaf path, and the tree predicts the mixture `sum_l P_l softmax(leaf_l)`; its
  log is `logsumexp_l(log P_l + log_softmax(leaf_l))` (log-probabilities, so
  cross-entropy on it is the negative log-likelihood of the mixture).
- hard routing: one path per sample; `P` is one-hot and the prediction is that leaf's
  log-softmax, written as `sum_l P_l log_softmax(leaf_l)`: exact for a one-hot `P`,
  and finite-gradient for a straight-through `P`.

`balance_penalty` is Frosst & Hinton's regularizer that keeps each inner node's average
routing near one half.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ...execution import resolve_execution
from ...layers.gated_block import is_hard


def check_depth(model: str, depth: int) -> int:
    """Return `depth` if it is an int >= 1, else raise `ConfigError` naming `model`."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ConfigError(f"model {model!r}: depth must be an int >= 1, got {depth!r}")
    return depth


def check_decisions(model: str, decisions: Tensor, batch: int, depth: int) -> Tensor:
    """Validate user-given routing decisions: `(B, 2^depth - 1)`, every value 0 or 1.

    Returns them unchanged. Raises `ConfigError` naming `model` and `decisions`.
    """
    expected = (batch, 2**depth - 1)
    if tuple(decisions.shape) != expected:
        raise ConfigError(
            f"model {model!r}: decisions must have shape (B, num_inner) = {expected}, "
            f"got {tuple(decisions.shape)}"
        )
    if not is_hard(decisions):
        raise ConfigError(f"model {model!r}: decisions must be hard (every value 0 or 1)")
    return decisions


def descend(left: Tensor, right: Tensor, start: Tensor, combine: Callable, depth: int) -> list[Tensor]:
    """Accumulate per-node values from the root down, one level at a time.

    Args:
        left, right: `(B, 2^d - 1)` per inner node: the value of going left / right
            (e.g. `1 - r` / `r`, or their logs).
        start: `(B, 1)` the root's value (1, or 0 for logs).
        combine: `(parent (B, n), edge (B, n)) -> (B, n)`, e.g. `torch.mul` / `torch.add`.

    Returns:
        `d + 1` tensors, level `k` of shape `(B, 2^k)`: the value of every node of that level,
        left to right (level `d` = the leaves).
    """
    levels = [start]
    for k in range(depth):
        span = slice(2**k - 1, 2 ** (k + 1) - 1)
        parent = levels[-1]
        pair = torch.stack([combine(parent, left[:, span]), combine(parent, right[:, span])], dim=2)
        levels.append(pair.flatten(1))  # children of node j of a level: 2j and 2j + 1
    return levels


def leaf_log_probs(router_logits: Tensor, depth: int) -> Tensor:
    """Soft routing: `(B, 2^d - 1)` logits of going right -> `(B, 2^d)` log path probabilities.

    `r_i = sigmoid(logit_i)`; computed with `logsigmoid`, so no probability underflows.
    """
    start = router_logits.new_zeros(router_logits.shape[0], 1)
    left, right = F.logsigmoid(-router_logits), F.logsigmoid(router_logits)
    return descend(left, right, start, torch.add, depth)[-1]


def leaf_probs(go_right: Tensor, depth: int) -> Tensor:
    """`(B, 2^d - 1)` values `r` of going right (hard, straight-through or soft) ->
    `(B, 2^d)` path probabilities (one-hot rows for hard `r`)."""
    start = go_right.new_ones(go_right.shape[0], 1)
    return descend(1 - go_right, go_right, start, torch.mul, depth)[-1]


def reach_probs(go_right: Tensor, depth: int) -> Tensor:
    """`(B, 2^d - 1)` values of going right -> `(B, 2^d - 1)` probability of reaching each
    inner node (1 at the root)."""
    start = go_right.new_ones(go_right.shape[0], 1)
    levels = descend(1 - go_right, go_right, start, torch.mul, depth - 1)
    return torch.cat(levels, dim=1)


def follow(decisions: Tensor, depth: int) -> tuple[Tensor, Tensor]:
    """Follow hard decisions from the root.

    Args:
        decisions: `(B, 2^d - 1)`, nonzero = go right (only the visited nodes are read).

    Returns:
        `(leaf, path)`: `leaf` `(B,)` int64 in `[0, 2^d)`, `path` `(B, d)` int64, the inner
        node visited at each level.
    """
    node = torch.zeros(decisions.shape[0], dtype=torch.int64, device=decisions.device)
    path = []
    for _ in range(depth):
        path.append(node)
        right = decisions.gather(1, node[:, None]).squeeze(1) != 0
        node = 2 * node + 1 + right.long()
    return node - (2**depth - 1), torch.stack(path, dim=1)


def soft_mixture(log_path: Tensor, leaf_log_q: Tensor) -> Tensor:
    """`log sum_l P_l q_l`: `log_path` `(B, L)`, `leaf_log_q` `(B or 1, L, C)` -> `(B, C)`."""
    return torch.logsumexp(log_path.unsqueeze(-1) + leaf_log_q, dim=1)


def hard_mixture(path: Tensor, leaf_log_q: Tensor) -> Tensor:
    """`sum_l P_l log q_l` for one-hot (or straight-through) `path` `(B, L)`;
    `leaf_log_q` `(B or 1, L, C)` -> `(B, C)`. Elementwise, so no FLOPs are counted."""
    return (path.unsqueeze(-1).to(leaf_log_q.dtype) * leaf_log_q).sum(dim=1)


def node_depths(depth: int) -> list[int]:
    """Level of each inner node (root 0), in heap order: `(2^d - 1)` ints."""
    return [k for k in range(depth) for _ in range(2**k)]


def balance_penalty(router_logits: Tensor, depth: int, strength: float, decay: float) -> Tensor:
    """Frosst & Hinton's penalty pushing every inner node's batch routing toward one half.

    With `alpha_i = sum_b P_i(b) r_i(b) / sum_b P_i(b)` (`P_i` the probability of reaching
    node `i`, `r_i = sigmoid(logit_i)`), the penalty is
    `-sum_i strength * decay^level(i) * 0.5 * (log alpha_i + log(1 - alpha_i))`,
    smallest (`log 2` per unit weight) when every `alpha_i = 0.5`.

    Args:
        router_logits: `(B, 2^d - 1)` logits of going right.
        depth: `d`.
        strength, decay: the weight of the root, and its factor per level (the paper
            uses `2^-level`, i.e. `decay = 0.5`).

    Returns:
        A scalar in `router_logits`' dtype.
    """
    r = torch.sigmoid(router_logits)
    reach = reach_probs(r, depth)
    tiny = torch.finfo(r.dtype).tiny
    alpha = (reach * r).sum(dim=0) / reach.sum(dim=0).clamp_min(tiny)
    eps = torch.finfo(r.dtype).eps
    alpha = alpha.clamp(eps, 1 - eps)
    levels = torch.tensor(node_depths(depth), dtype=r.dtype, device=r.device)
    weights = strength * decay**levels
    return -(weights * 0.5 * (alpha.log() + (1 - alpha).log())).sum()
