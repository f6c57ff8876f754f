"""Routers for mixtures of experts: they *decide*; `moe.MoELayer` executes the decision.

Every router maps tokens `(T, d)` to a `Routing`, which unpacks like megablocks' router
output, `scores, expert_weights, expert_indices = router(x)`:

- `TopKRouter`: softmax over experts, each token picks its top `k` (Shazeer et al. 2017;
  Switch/GShard). `expert_weights`, `expert_indices`: `(T, k)`.
- `NoisyTopKRouter`: top-k of logits plus learned, input-dependent Gaussian noise while
  training (Shazeer et al., "Outrageously Large Neural Networks", 2017); the weights are
  a softmax over the `k` chosen logits.
- `ExpertChoiceRouter`: each expert picks its top `capacity` tokens (Zhou et al.,
  "Mixture-of-Experts with Expert Choice Routing", 2022): perfectly balanced, a token
  may get zero or several experts. `expert_weights`, `expert_indices`: `(E, capacity)`,
  the indices being *token* ids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..flops import matmul_flops
from ..errors import ConfigError


@dataclass(frozen=True)
class Routing:
    """A routing decision for `T` tokens over `E` experts.

    Attributes:
        scores: `(T, E)` router probabilities (softmax over experts), for aux losses.
        expert_weights: `(T, k)` combine weights (token choice) or `(E, C)` (expert choice).
        expert_indices: `(T, k)` int64 expert ids (token choice) or `(E, C)` token ids
            (expert choice).
        logits: `(T, E)` router logits (for the z-loss).
        expert_choice: True when the indices are per expert (see above).

    Iterating yields `(scores, expert_weights, expert_indices)`, megablocks' triple.
    """

    scores: Tensor
    expert_weights: Tensor
    expert_indices: Tensor
    logits: Tensor
    expert_choice: bool = False

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.scores, self.expert_weights, self.expert_indices))

    @property
    def num_experts(self) -> int:
        return self.scores.shape[-1]

    @property
    def num_tokens(self) -> int:
        return self.scores.shape[0]


def _check_router_args(name: str, d_model: int, num_experts: int, k: int) -> None:
    for key, value in {"d_model": d_model, "num_experts": num_experts, "k": k}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}: {key} must be a positive int, got {value!r}")
    if k > num_experts:
        raise ConfigError(f"{name}: k={k} exceeds num_experts={num_experts}")


def _tokens(x: Tensor, d_model: int, name: str) -> Tensor:
    if x.shape[-1] != d_model:
        raise ConfigError(
            f"{name}: tokens must have {d_model} features, got shape {tuple(x.shape)}"
        )
    return x.reshape(-1, d_model)


class TopKRouter(nn.Module):
    """Softmax top-k router: `scores = softmax(x W)`, each token keeps its `k` best experts.

    Args:
        d_model: token features.
        num_experts: `E`.
        k: experts per token.
        normalize_weights: rescale the `k` kept probabilities to sum to 1 (Mixtral, GShard);
            False keeps the raw probabilities (Switch with `k = 1`).

    Shapes:
        `(..., d_model) -> Routing` with `T = prod(...)`, weights/indices `(T, k)`.
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        k: int = 2,
        *,
        normalize_weights: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        _check_router_args("TopKRouter", d_model, num_experts, k)
        self.d_model, self.num_experts, self.k = d_model, num_experts, k
        self.normalize_weights = normalize_weights
        self.gate = nn.Linear(d_model, num_experts, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Routing:
        logits = self.gate(_tokens(x, self.d_model, "TopKRouter"))
        scores = logits.softmax(dim=-1)
        weights, indices = scores.topk(self.k, dim=-1)
        if self.normalize_weights:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(scores, weights, indices, logits)

    def flops(self, tokens: int) -> int:
        return matmul_flops(tokens, self.d_model, self.num_experts)


class NoisyTopKRouter(nn.Module):
    """Noisy top-k gating: `h = x W_g + eps * softplus(x W_noise)` (eps ~ N(0, 1), training only).

    The top `k` of `h` are kept and their weights are `softmax` over those `k` values;
    `scores = softmax(h)` over all experts feeds the balance loss.

    Args:
        d_model, num_experts, k: as `TopKRouter`.

    Shapes:
        `forward(x, generator=None)`: `(..., d_model) -> Routing`, weights/indices `(T, k)`.
    """

    def __init__(
        self, d_model: int, num_experts: int, k: int = 2, *, device=None, dtype=None
    ) -> None:
        super().__init__()
        _check_router_args("NoisyTopKRouter", d_model, num_experts, k)
        self.d_model, self.num_experts, self.k = d_model, num_experts, k
        factory = {"device": device, "dtype": dtype}
        self.gate = nn.Linear(d_model, num_experts, bias=False, **factory)
        self.noise = nn.Linear(d_model, num_experts, bias=False, **factory)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Routing:
        tokens = _tokens(x, self.d_model, "NoisyTopKRouter")
        logits = self.gate(tokens)
        if self.training:
            std = F.softplus(self.noise(tokens))
            eps = torch.randn(
                logits.shape, generator=generator, device=logits.device, dtype=logits.dtype
            )
            logits = logits + eps * std
        top, indices = logits.topk(self.k, dim=-1)
        return Routing(logits.softmax(dim=-1), top.softmax(dim=-1), indices, logits)

    def flops(self, tokens: int) -> int:
        return matmul_flops(tokens, self.d_model, self.num_experts) * (2 if self.training else 1)


class ExpertChoiceRouter(nn.Module):
    """Expert choice: each expert takes the `capacity` tokens with its highest scores.

    Args:
        d_model, num_experts: as `TopKRouter`.
        capacity_factor: `c`, the mean number of experts per token; each expert takes
            `capacity = ceil(T * c / E)` tokens (at most `T`).

    Shapes:
        `(..., d_model) -> Routing` with `expert_choice=True`, weights and token
        indices `(E, capacity)`.
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        capacity_factor: float = 2.0,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        _check_router_args("ExpertChoiceRouter", d_model, num_experts, 1)
        if not capacity_factor > 0:
            raise ConfigError(
                f"ExpertChoiceRouter: capacity_factor must be > 0, got {capacity_factor!r}"
            )
        self.d_model, self.num_experts = d_model, num_experts
        self.capacity_factor = float(capacity_factor)
        self.gate = nn.Linear(d_model, num_experts, bias=False, device=device, dtype=dtype)

    def capacity(self, tokens: int) -> int:
        return max(1, min(tokens, math.ceil(tokens * self.capacity_factor / self.num_experts)))

    def forward(self, x: Tensor) -> Routing:
        logits = self.gate(_tokens(x, self.d_model, "ExpertChoiceRouter"))
        scores = logits.softmax(dim=-1)
        weights, token_ids = scores.t().topk(self.capacity(scores.shape[0]), dim=-1)
        return Routing(scores, weights, token_ids, logits, expert_choice=True)

    def flops(self, tokens: int) -> int:
        return matmul_flops(tokens, self.d_model, self.num_experts)
