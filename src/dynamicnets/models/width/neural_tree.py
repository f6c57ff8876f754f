"""A hard-routed neural tree: Adaptive Neural Trees (Tanno et al., ICML 2019) with a fixed,
complete binary structure. Each sample runs one root-to-leaf path at inference.

Every node of a depth-`d` tree (heap order, see `binary_tree`) holds a *transformer*, a
`conv 3x3 - BN - ReLU` block (the root keeps the resolution, every other node halves
it); every inner node a *router* (global average pool -> linear -> one logit of going
right); every leaf a *solver* (global average pool -> linear classifier). A sample's
features pass through the transformers along its path.

- `masked` (training, static shapes): every node runs on the whole batch; the output
  mixes the leaves' log-softmax by path probabilities: soft (`sigmoid` routers,
  `log sum_l P_l q_l`), or, with `hard_training`, straight-through hard Gumbel-sigmoid
  decisions in training (threshold in eval) that select one leaf per sample while the
  relaxed sample carries the routers' gradient. Every parameter takes part.
- `compact` (inference): the batch is split at each inner node by the hard decision
  (`router logit > 0`, or given `decisions`): each child gathers its samples, runs
  on them only, and the leaves' predictions are put back in batch order. A subtree
  that gets no sample is never called.

Per-sample FLOPs: compact = the `d + 1` transformers of the path + its `d` routers + one
solver (the same for every path: nodes of a level have the same shape); masked = every
transformer, router and solver.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...compact import rows_where
from ...errors import ConfigError
from ...gates import gumbel_sigmoid
from ...flops import linear_flops
from .._registry import register_model
from ..static._checks import check_input_shape, require_positive
from ..static.classifier_head import ClassifierHead
from ..static.conv_norm_act import ConvNormAct
from .binary_tree import hard_mixture, leaf_log_probs, leaf_probs, soft_mixture
from .routed_tree import RoutedTree

NAME = "neural_tree_cnn"


class NeuralTree(RoutedTree):
    """A complete binary tree of conv blocks with routers and leaf classifiers.

    Args:
        depth: `d >= 1`: `2^d - 1` routers, `2^d` solvers, `2^(d+1) - 1` transformers.
        channels: output channels of every transformer.
        in_chans: input channels.
        num_classes: classes `C`.
        hard_training: masked execution routes by straight-through hard Gumbel-sigmoid
            samples (training) / thresholds (eval) instead of soft probabilities.
        tau: Gumbel temperature `> 0` for `hard_training`.
        penalty_strength, penalty_decay: optional routing-balance aux loss
            (`binary_tree.balance_penalty`, 0 = off) on the masked execution.

    Attributes:
        transformers: `nn.ModuleList` of `ConvNormAct`, one per node in heap order.
        routers: `nn.ModuleList` of `nn.Linear(channels, 1)`, one per inner node.
        solvers: `nn.ModuleList` of `ClassifierHead(channels, C)`, one per leaf.
        depth, num_inner, default_input_shape `(in_chans, 32, 32)` (any `H, W` works).
        num_features: `in_chans` (the tree is all head, see `RoutedTree`).

    Shapes:
        `forward(x (B, in_chans, H, W), execution=None, decisions=None (B, 2^d - 1))` ->
        `DynamicOutput`, see `RoutedTree`.

    `get_classifier()` is `solvers`, the leaves' classifiers; `reset_classifier` gives
    every leaf a fresh linear layer.
    """

    def __init__(
        self,
        depth: int = 3,
        channels: int = 8,
        in_chans: int = 3,
        num_classes: int = 10,
        *,
        hard_training: bool = False,
        tau: float = 1.0,
        penalty_strength: float = 0.0,
        penalty_decay: float = 0.5,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(NAME, depth, penalty_strength, penalty_decay)
        require_positive(NAME, channels=channels, in_chans=in_chans, num_classes=num_classes)
        if not tau > 0:
            raise ConfigError(f"model {NAME!r}: tau must be > 0, got {tau!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_chans = in_chans
        self.default_input_shape = (in_chans, 32, 32)
        self.hard_training = bool(hard_training)
        self.tau = float(tau)
        self.transformers = nn.ModuleList(
            [ConvNormAct(in_chans, channels, 3, 1, **factory)]
            + [ConvNormAct(channels, channels, 3, 2, **factory) for _ in range(2 ** (depth + 1) - 2)]
        )
        self.routers = nn.ModuleList(nn.Linear(channels, 1, **factory) for _ in range(self.num_inner))
        self.solvers = nn.ModuleList(
            ClassifierHead(channels, num_classes, **factory) for _ in range(2**depth)
        )

    # ----------------------------------------------------------- classifier API
    @property
    def classifier_paths(self) -> tuple[str, ...]:
        """The linear layer of every leaf's solver, leftmost leaf first."""
        return tuple(f"solvers.{leaf}.fc" for leaf in range(len(self.solvers)))

    def get_classifier(self) -> nn.Module:
        """`solvers`: the leaves' classifiers (`ClassifierHead`s)."""
        return self.solvers

    @property
    def num_features(self) -> int:
        """`in_chans`: the tree reads the input itself."""
        return self.in_chans

    # ------------------------------------------------------------------ costs
    def level_costs(self, input_shape: tuple[int, ...]) -> list[int]:
        """Per-sample FLOPs of one transformer at each level `0 .. d` (root first)."""
        shape = check_input_shape(NAME, input_shape, self.in_chans, spatial_dims=2)
        costs = []
        for k in range(self.depth + 1):
            flops, shape = self.transformers[2**k - 1].flops_and_shape(shape)
            costs.append(flops)
        return costs

    def path_flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs of one root-to-leaf path (compact execution)."""
        router = linear_flops(self.routers[0])
        return sum(self.level_costs(input_shape)) + self.depth * router + self.solvers[0].flops()

    def all_nodes_flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs of every node, router and solver (masked execution)."""
        nodes = sum(2**k * c for k, c in enumerate(self.level_costs(input_shape)))
        routers = self.num_inner * linear_flops(self.routers[0])
        return nodes + routers + 2**self.depth * self.solvers[0].flops()

    # -------------------------------------------------------------- execution
    def prepare(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """`x` unchanged and its per-sample shape; `ConfigError` unless `(B, in_chans, H, W)`."""
        return x, check_input_shape(NAME, tuple(x.shape[1:]), self.in_chans, spatial_dims=2)

    def route(self, node: int, features: Tensor) -> Tensor:
        """Router of inner `node`: `(n, channels, h, w) -> (n,)` logits of going right."""
        return self.routers[node](features.mean(dim=(2, 3))).squeeze(1)

    def leaf_log_q(self, leaf: int, features: Tensor) -> Tensor:
        """Solver of `leaf`: `(n, channels, h, w) -> (n, C)` log-probabilities."""
        return torch.log_softmax(self.solvers[leaf](features), dim=-1)

    def run_masked(self, x: Tensor, decisions: Tensor | None,
                   thresholds: Sequence[float] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Every node on the whole batch.

        Returns `(log-probabilities (B, C), router logits (B, 2^d - 1), routing values
        used (B, 2^d - 1))`: the given `decisions`, straight-through hard samples
        (`hard_training`) or soft `sigmoid(logits)`.
        """
        features = [self.transformers[0](x)]
        logits = []
        for node in range(self.num_inner):
            logits.append(self.route(node, features[node]))
            features.append(self.transformers[2 * node + 1](features[node]))
            features.append(self.transformers[2 * node + 2](features[node]))
        router_logits = torch.stack(logits, dim=1)
        leaf_log_q = torch.stack(
            [self.leaf_log_q(leaf, features[self.num_inner + leaf]) for leaf in range(2**self.depth)],
            dim=1,
        )
        if decisions is None and thresholds is not None:
            decisions = router_logits > router_logits.new_tensor(thresholds)
        if decisions is None and not self.hard_training:
            out = soft_mixture(leaf_log_probs(router_logits, self.depth), leaf_log_q)
            return out, router_logits, torch.sigmoid(router_logits)
        if decisions is None:
            routing = gumbel_sigmoid(router_logits, self.tau, hard=True, noise=self.training)
        else:
            routing = decisions.to(router_logits.dtype)
        return hard_mixture(leaf_probs(routing, self.depth), leaf_log_q), router_logits, routing

    def run_compact(
        self, x: Tensor, decisions: Tensor | None,
        thresholds: Sequence[float] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Route the batch: each sample runs the transformers of its own path only.

        Returns `(log-probabilities (B, C), leaf (B,), path (B, d), routing (B, 2^d - 1))`
        (routing: 0/1 at the visited nodes, -1 elsewhere).
        """
        batch = x.shape[0]
        routing = x.new_full((batch, self.num_inner), -1.0)
        path = torch.zeros(batch, self.depth, dtype=torch.int64, device=x.device)
        # (node, batch positions of its samples, its output on them)
        cuts = [0.0] * self.num_inner if thresholds is None else list(thresholds)
        frontier = [(0, torch.arange(batch, device=x.device), self.transformers[0](x))]
        for level in range(self.depth):
            children = []
            for node, rows, features in frontier:
                path[rows, level] = node
                z = self.route(node, features)
                right = z > cuts[node] if decisions is None else decisions[rows, node] != 0
                routing[rows, node] = right.to(routing.dtype)
                for child, take in ((2 * node + 1, ~right), (2 * node + 2, right)):
                    index = rows_where(take)
                    if index.numel() == 0:
                        continue
                    if index.numel() < rows.numel():  # else the whole group goes there
                        rows_c, features_c = rows[index], features[index]
                    else:
                        rows_c, features_c = rows, features
                    children.append((child, rows_c, self.transformers[child](features_c)))
            frontier = children
        leaf = torch.empty(batch, dtype=torch.int64, device=x.device)
        order, parts = [], []
        for node, rows, features in frontier:
            leaf[rows] = node - self.num_inner
            order.append(rows)
            parts.append(self.leaf_log_q(node - self.num_inner, features))
        inverse = torch.argsort(torch.cat(order))
        return torch.cat(parts)[inverse], leaf, path, routing


@register_model
def neural_tree_cnn(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 3,
    channels: int = 8,
    hard_training: bool = False,
    tau: float = 1.0,
    penalty_strength: float = 0.0,
    penalty_decay: float = 0.5,
    device=None,
    dtype=None,
) -> NeuralTree:
    """Hard-routed neural tree; see `NeuralTree`. Default (3x32x32, depth 3, 8 channels,
    10 classes): 9,303 params (15 transformers, 7 routers, 8 solvers); per sample
    829,648 FLOPs compact (one path: 442,368 + 294,912 + 73,728 + 18,432 for the
    transformers, 48 for 3 routers, 160 for a solver), 1,475,952 masked (every node)."""
    return NeuralTree(
        depth, channels, in_chans, num_classes, hard_training=hard_training, tau=tau,
        penalty_strength=penalty_strength, penalty_decay=penalty_decay, device=device, dtype=dtype,
    )
