"""Soft decision tree (Frosst & Hinton, "Distilling a Neural Network Into a Soft Decision
Tree", 2017): a complete binary tree of learned linear splits on the flattened input.

Inner node `i` routes a sample right with probability `r_i(x) = sigmoid(beta (x . w_i + b_i))`
(`beta` an inverse temperature, learnable or fixed); leaf `l` holds class logits `phi_l`
and predicts `Q_l = softmax(phi_l)`. Heap numbering and the mixtures: `binary_tree`.

- `masked` (training, static shapes): every inner node's dot product runs on the whole
  batch (one `(B, F) x (F, 2^d - 1)` matrix product) and the output is the log of the
  mixture `sum_l P_l(x) Q_l`; with hard `decisions` given, the chosen leaf's `log Q_l`.
  The paper's regularizer (`binary_tree.balance_penalty`) goes into
  `aux_losses["routing_balance"]`.
- `compact` (inference): each sample follows the more probable child at every node,
  so it computes only the `d` dot products of its own root-to-leaf path (its node's
  weight row is gathered and a batched `(1, F) x (F, 1)` product runs per level), and
  predicts its leaf's `log Q_l`.

Per-sample FLOPs: `2 F (2^d - 1)` masked, `2 F d` compact (`F` = input features).
The paper's running average of `alpha` across batches for deep nodes is left out: it
would be module state updated in `forward`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from .._api import check_num_classes
from .._registry import register_model
from ..static._checks import require_positive
from .binary_tree import hard_mixture, leaf_log_probs, leaf_probs, soft_mixture
from .routed_tree import RoutedTree

NAME = "soft_decision_tree"


class SoftDecisionTree(RoutedTree):
    """A depth-`d` soft decision tree on flattened inputs (see the module docstring).

    Args:
        input_shape: per-sample input shape it is built for (any rank; flattened to
            `F = prod(input_shape)` features).
        num_classes: classes `C`.
        depth: `d >= 1`: `2^d - 1` inner nodes, `2^d` leaves.
        beta: initial inverse temperature `> 0`.
        learn_beta: make `beta` a parameter (else a fixed buffer).
        penalty_strength: `>= 0`, weight of the root in the balance penalty (0 = off).
        penalty_decay: in `(0, 1]`, factor of that weight per level (paper: 0.5).

    Attributes:
        inner: `nn.Linear(F, 2^d - 1)`, row `i` = `(w_i, b_i)` of inner node `i`.
        leaf_logits: `(2^d, C)` parameter, the `phi_l`.
        beta: scalar parameter or buffer.
        depth, in_features, default_input_shape.
        num_features: `in_features` (the tree is all head, see `RoutedTree`).

    The leaf logits are the tree's only classifier and not a module of their own:
    `get_classifier()` is the tree itself, and `reset_classifier` draws fresh
    `leaf_logits` for the new number of classes.

    Shapes:
        `forward(x (B, *input_shape), execution=None, decisions=None (B, 2^d - 1))` ->
        `DynamicOutput`, see `RoutedTree` (masked: `decisions["routing"]` holds the `r_i`).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 10,
        depth: int = 4,
        *,
        beta: float = 1.0,
        learn_beta: bool = True,
        penalty_strength: float = 0.1,
        penalty_decay: float = 0.5,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(NAME, depth, penalty_strength, penalty_decay)
        shape = tuple(input_shape) if isinstance(input_shape, Sequence) else (input_shape,)
        require_positive(NAME, num_classes=num_classes)
        if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ConfigError(
                f"model {NAME!r}: input_shape (in_chans, *input_size) must be positive ints, "
                f"got {input_shape!r}"
            )
        if not beta > 0:
            raise ConfigError(f"model {NAME!r}: beta must be > 0, got {beta!r}")
        factory = {"device": device, "dtype": dtype}
        self.default_input_shape = shape
        self.in_features = math.prod(shape)
        self.inner = nn.Linear(self.in_features, self.num_inner, **factory)
        self.leaf_logits = nn.Parameter(torch.empty(2**depth, num_classes, **factory))
        nn.init.normal_(self.leaf_logits, std=0.1)
        beta_t = torch.full((), float(beta), **factory)
        if learn_beta:
            self.beta = nn.Parameter(beta_t)
        else:
            self.register_buffer("beta", beta_t)

    classifier_paths = ()

    def get_classifier(self) -> nn.Module:
        """The tree itself (its classifier is the `leaf_logits` parameter)."""
        return self

    @property
    def num_features(self) -> int:
        """`in_features`: the tree reads the flattened input."""
        return self.in_features

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh `leaf_logits` `(2^d, num_classes)`, initialised as at construction."""
        check_num_classes(NAME, num_classes)
        old = self.leaf_logits
        self.leaf_logits = nn.Parameter(torch.empty(old.shape[0], num_classes, device=old.device, dtype=old.dtype))
        nn.init.normal_(self.leaf_logits, std=0.1)

    def prepare(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """`(B, *input_shape) -> ((B, F), per-sample shape)`; raises `ConfigError` on another
        feature count."""
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ConfigError(
                f"model {NAME!r} was built for {self.in_features} input features "
                f"{self.default_input_shape}, got per-sample shape {tuple(x.shape[1:])}; "
                "set input_size to the data's per-sample shape"
            )
        return x.flatten(1), tuple(x.shape[1:])

    def router_logits(self, x_flat: Tensor) -> Tensor:
        """`(B, F) -> (B, 2^d - 1)`: `beta (x . w_i + b_i)` for every inner node."""
        return self.beta * self.inner(x_flat)

    def path_flops(self, input_shape: tuple[int, ...] | None = None) -> int:
        """Per-sample FLOPs of the compact path: `d` dot products of `F` features (`F` is
        fixed at construction, so `input_shape` is not needed)."""
        return 2 * self.in_features * self.depth

    def all_nodes_flops(self, input_shape: tuple[int, ...] | None = None) -> int:
        """Per-sample FLOPs of the masked execution: every inner node's dot product."""
        return 2 * self.in_features * self.num_inner

    def run_masked(self, x_flat: Tensor, decisions: Tensor | None,
                   thresholds: Sequence[float] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Every node on the whole batch.

        Returns `(log-probabilities (B, C), router logits (B, 2^d - 1), routing values
        used (B, 2^d - 1))`: soft `r = sigmoid(logits)`, or the given hard `decisions`.
        """
        logits = self.router_logits(x_flat)
        leaf_log_q = torch.log_softmax(self.leaf_logits, dim=-1).unsqueeze(0)
        if decisions is None and thresholds is not None:
            decisions = logits > logits.new_tensor(thresholds)
        if decisions is None:
            out = soft_mixture(leaf_log_probs(logits, self.depth), leaf_log_q)
            return out, logits, torch.sigmoid(logits)
        routing = decisions.to(logits.dtype)
        return hard_mixture(leaf_probs(routing, self.depth), leaf_log_q), logits, routing

    def run_compact(
        self, x_flat: Tensor, decisions: Tensor | None,
        thresholds: Sequence[float] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One root-to-leaf path per sample: `d` gathered dot products.

        At each visited node the sample goes right where `beta (x . w + b) > 0`, or where
        `decisions` says so. Returns `(log-probabilities (B, C), leaf (B,), path (B, d),
        routing (B, 2^d - 1))` (routing: 0/1 at the visited nodes, -1 elsewhere).
        """
        batch = x_flat.shape[0]
        rows = torch.arange(batch, device=x_flat.device)
        node = torch.zeros(batch, dtype=torch.int64, device=x_flat.device)
        routing = x_flat.new_full((batch, self.num_inner), -1.0)
        x_row = x_flat.unsqueeze(1)  # (B, 1, F)
        cut_table = x_flat.new_tensor([0.0] * self.num_inner if thresholds is None else list(thresholds))
        path = []
        for _ in range(self.depth):
            path.append(node)
            w = self.inner.weight[node].unsqueeze(2)  # (B, F, 1)
            z = self.beta * (torch.bmm(x_row, w).view(batch) + self.inner.bias[node])
            right = z > cut_table[node] if decisions is None else decisions[rows, node] != 0
            routing[rows, node] = right.to(routing.dtype)
            node = 2 * node + 1 + right.long()
        leaf = node - self.num_inner
        log_q = torch.log_softmax(self.leaf_logits, dim=-1)[leaf]
        return log_q, leaf, torch.stack(path, dim=1), routing


@register_model
def soft_decision_tree(
    *,
    num_classes: int = 10,
    in_chans: int = 1,
    input_size: int | Sequence[int] = (8, 8),
    depth: int = 4,
    beta: float = 1.0,
    learn_beta: bool = True,
    penalty_strength: float = 0.1,
    penalty_decay: float = 0.5,
    device=None,
    dtype=None,
) -> SoftDecisionTree:
    """Soft decision tree on flattened `(in_chans, *input_size)` inputs; see
    `SoftDecisionTree`. Default (digits, `1 x 8 x 8`, depth 4, 10 classes): 1,136 params
    (15 x 65 split weights, 16 x 10 leaf logits, beta); 512 FLOPs per sample compact
    (4 dot products of 64), 1,920 masked (15 of them)."""
    require_positive(NAME, in_chans=in_chans)
    size = (input_size,) if isinstance(input_size, int) else tuple(input_size)
    return SoftDecisionTree(
        (in_chans, *size), num_classes, depth, beta=beta, learn_beta=learn_beta,
        penalty_strength=penalty_strength, penalty_decay=penalty_decay, device=device, dtype=dtype,
    )
