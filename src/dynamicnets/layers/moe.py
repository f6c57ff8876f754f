"""Mixture of experts: dispatch tokens sorted by expert, each expert runs on its own tokens only.

`MoELayer.forward(x, routing)` executes a `routers.Routing` decision:

1. flatten the decision into token-expert assignments (for top-k: every first choice
   in token order, then every second choice, ...: the priority order of GShard);
2. stable-sort the assignments by expert; with a `capacity_factor`, each expert keeps
   its first `capacity = ceil(capacity_factor * T * k / E)` assignments and the rest
   are dropped (their tokens get nothing from that expert; a residual around the layer
   carries them). `capacity_factor=None` is dropless;
3. gather the tokens in that order, run expert `e` on its contiguous block of rows (no
   masks, no padding), scale by the combine weights and scatter-add back to the tokens.

Aux losses (scalars, weighted): `"load_balance"`, the Switch Transformer loss
`E * sum_e f_e * P_e` (`f_e` the fraction of assignments routed to `e` before dropping,
`P_e` the mean router probability; 1.0 when perfectly balanced), and `"router_z"`, the
ST-MoE z-loss `mean(logsumexp(logits)^2)`. Expert-choice routing is balanced by
construction and gets only the z-loss.

`dense_moe` is the dense special case: every expert on every token, fused with
per-token soft weights (all experts' scores, or the sparse weights scattered densely).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .experts import MLPExperts
from .routers import ExpertChoiceRouter, NoisyTopKRouter, Routing, TopKRouter

ROUTERS = ("topk", "noisy_topk", "expert_choice")


@dataclass
class MoEOutput:
    """What an MoE layer returns.

    Attributes:
        output: same shape as the input `(..., d)`.
        aux_losses: `{"load_balance": scalar, "router_z": scalar}` (weighted; a loss with
            weight 0 is left out).
        kept: bool, the routing's layout (`(T, k)` or `(E, C)`): False where capacity
            dropped the assignment.
        tokens_per_expert: `(E,)` int64 rows each expert ran.
        flops: FLOPs executed (experts, plus the router for `MoE`), as `FlopCounterMode`
            counts them.
    """

    output: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    kept: Tensor | None = None
    tokens_per_expert: Tensor | None = None
    flops: int = 0


@dataclass(frozen=True)
class Dispatch:
    """Token-expert assignments sorted by expert (what the experts run).

    Attributes:
        token_ids: `(N,)` token of each kept assignment, grouped by expert.
        weights: `(N,)` combine weight of each kept assignment.
        slots: `(N,)` for token choice, the flat index `j * T + t` of each kept assignment
            (token `t`'s `j`-th choice); None for expert choice.
        counts: `(E,)` kept assignments per expert (`token_ids` holds `counts[0]` rows
            of expert 0, then expert 1's, ...).
        kept: bool, in the routing's layout.
        routed: `(E,)` assignments per expert before dropping.
    """

    token_ids: Tensor
    weights: Tensor
    slots: Tensor | None
    counts: Tensor
    kept: Tensor
    routed: Tensor


def capacity(tokens: int, k: int, num_experts: int, capacity_factor: float) -> int:
    """Rows per expert: `ceil(capacity_factor * tokens * k / num_experts)`."""
    return math.ceil(capacity_factor * tokens * k / num_experts)


def dispatch(routing: Routing, capacity_factor: float | None = None) -> Dispatch:
    """Sort a routing's assignments by expert and apply the capacity (see the module doc)."""
    num_experts = routing.num_experts
    if routing.expert_choice:
        c = routing.expert_indices.shape[1]
        counts = torch.full((num_experts,), c, dtype=torch.long, device=routing.scores.device)
        kept = torch.ones_like(routing.expert_indices, dtype=torch.bool)
        token_ids = routing.expert_indices.reshape(-1)
        return Dispatch(token_ids, routing.expert_weights.reshape(-1), None, counts, kept, counts)
    t, k = routing.expert_indices.shape
    # priority order: all first choices (token order), then all second choices, ...
    experts = routing.expert_indices.t().reshape(-1)
    order = torch.argsort(experts, stable=True)
    routed = torch.bincount(experts, minlength=num_experts)
    kept_flat = None
    if capacity_factor is None:
        counts = routed
    else:
        cap = capacity(t, k, num_experts, capacity_factor)
        starts = torch.cumsum(routed, 0) - routed
        position = torch.arange(order.numel(), device=order.device) - starts[experts[order]]
        order = order[position < cap]
        counts = routed.clamp(max=cap)
        kept_flat = torch.zeros(t * k, dtype=torch.bool, device=order.device)
        kept_flat.index_fill_(0, order, True)
    if kept_flat is None:
        kept_flat = torch.ones(t * k, dtype=torch.bool, device=order.device)
    token_ids = order % t
    weights = routing.expert_weights.t().reshape(-1)[order]
    return Dispatch(token_ids, weights, order, counts, kept_flat.view(k, t).t(), routed)


class MoELayer(nn.Module):
    """Runs a routing decision on `experts`: sorted dispatch, no masks.

    Args:
        experts: `MLPExperts` (or any module with `num_experts`, `forward_grouped(x, counts)`
            and `flops(rows)`).
        capacity_factor: None (dropless) or > 0; capacity per expert as in `capacity`.
        load_balance_weight, z_loss_weight: weights of the aux losses.

    Shapes:
        `forward(x, routing)`: `(..., d)` with `T = prod(...)` tokens and a `Routing` over
        those `T` tokens -> `MoEOutput` with `output (..., d)`.
    """

    def __init__(
        self,
        experts: nn.Module,
        *,
        capacity_factor: float | None = None,
        load_balance_weight: float = 0.01,
        z_loss_weight: float = 1e-3,
    ) -> None:
        super().__init__()
        if capacity_factor is not None and not capacity_factor > 0:
            raise ConfigError(
                f"MoELayer: capacity_factor must be None or > 0, got {capacity_factor!r}"
            )
        if load_balance_weight < 0 or z_loss_weight < 0:
            raise ConfigError("MoELayer: load_balance_weight and z_loss_weight must be >= 0")
        self.experts = experts
        self.capacity_factor = capacity_factor
        self.load_balance_weight = load_balance_weight
        self.z_loss_weight = z_loss_weight

    def forward(self, x: Tensor, routing: Routing) -> MoEOutput:
        d = x.shape[-1]
        tokens = x.reshape(-1, d)
        if routing.num_tokens != tokens.shape[0] or routing.num_experts != self.experts.num_experts:
            raise ConfigError(
                f"MoELayer: routing is for {routing.num_tokens} tokens x {routing.num_experts} "
                f"experts, the input has {tokens.shape[0]} tokens and the layer "
                f"{self.experts.num_experts} experts"
            )
        plan = dispatch(routing, self.capacity_factor)
        rows = tokens.index_select(0, plan.token_ids)
        out = self._combine(self._run_experts(rows, plan), plan, tokens, routing)
        return MoEOutput(
            output=out.view(x.shape),
            aux_losses=self.aux_losses(routing, plan),
            kept=plan.kept,
            tokens_per_expert=plan.counts,
            flops=self.experts.flops(plan.token_ids.numel()),
        )

    def _run_experts(self, rows: Tensor, plan: Dispatch) -> list[tuple[slice, Tensor]]:
        """Each expert on its contiguous block of `rows`, scaled by the combine weights."""
        outputs, start = [], 0
        for e, n in enumerate(plan.counts.tolist()):
            if n:
                block = slice(start, start + n)
                y = self.experts.forward_expert(e, rows[block])
                outputs.append((block, y.mul_(plan.weights[block].unsqueeze(1).to(y.dtype))))
            start += n
        return outputs

    @staticmethod
    def _combine(outputs, plan: Dispatch, tokens: Tensor, routing: Routing) -> Tensor:
        """Weighted expert rows back to their tokens: `(T, d)`."""
        if plan.slots is None:  # expert choice: a token may have any number of rows
            out = tokens.new_zeros(tokens.shape)
            for block, y in outputs:
                out = out.index_add(0, plan.token_ids[block], y)
            return out
        # token choice: each token has k slots; put every row in its slot, sum the slots
        t, k = routing.expert_indices.shape
        dropped = plan.slots.numel() < t * k
        slots = (tokens.new_zeros if dropped else tokens.new_empty)(t * k, tokens.shape[1])
        for block, y in outputs:
            slots.index_copy_(0, plan.slots[block], y)
        return slots.view(k, t, -1).sum(0)

    def aux_losses(self, routing: Routing, plan: Dispatch) -> dict[str, Tensor]:
        """`{"load_balance", "router_z"}` (weighted; zero-weight ones left out)."""
        losses: dict[str, Tensor] = {}
        if self.load_balance_weight > 0 and not routing.expert_choice:
            fraction = plan.routed.to(routing.scores.dtype) / plan.routed.sum()
            balance = routing.num_experts * (fraction * routing.scores.mean(dim=0)).sum()
            losses["load_balance"] = self.load_balance_weight * balance
        if self.z_loss_weight > 0:
            z = torch.logsumexp(routing.logits.float(), dim=-1).square().mean()
            losses["router_z"] = self.z_loss_weight * z.to(routing.logits.dtype)
        return losses


def combine_weights(routing: Routing) -> Tensor:
    """The routing's combine weights as a dense `(T, E)` matrix (zero where not routed)."""
    dense = routing.scores.new_zeros(routing.scores.shape)
    if routing.expert_choice:
        experts = torch.arange(routing.num_experts, device=dense.device)[:, None]
        experts = experts.expand_as(routing.expert_indices)
        where = (routing.expert_indices, experts)
        return dense.index_put(where, routing.expert_weights, accumulate=True)
    return dense.scatter_add(1, routing.expert_indices, routing.expert_weights)


def dense_moe(experts: MLPExperts, x: Tensor, weights: Tensor) -> Tensor:
    """Soft-weight fusion: every expert on every token, `sum_e weights[:, e] * expert_e(x)`.

    Arguments:
        experts: the experts.
        x: `(..., d)` tokens.
        weights: `(T, E)` per-token weights (e.g. `routing.scores`, or `combine_weights`).

    Returns:
        `(..., d)`.
    """
    tokens = x.reshape(-1, x.shape[-1])
    all_out = experts.forward_dense(tokens)  # (E, T, d)
    return torch.einsum("te,etd->td", weights.to(all_out.dtype), all_out).view(x.shape)


class MoE(nn.Module):
    """Router + `MLPExperts` + `MoELayer`: a mixture-of-experts MLP block for token sequences.

    Args:
        d_model: token features.
        hidden: hidden units per expert.
        num_experts: `E`.
        k: experts per token (token-choice routers) or mean experts per token
            (`"expert_choice"`, its capacity factor).
        router: `"topk"`, `"noisy_topk"` or `"expert_choice"`.
        capacity_factor: None (dropless) or > 0 (token-choice routers only).
        load_balance_weight, z_loss_weight: aux loss weights.
        activation: of the experts.

    Shapes:
        `(..., d_model) -> MoEOutput` with `output (..., d_model)`; `flops` includes the router.
    """

    def __init__(
        self,
        d_model: int,
        hidden: int,
        num_experts: int = 8,
        k: int = 2,
        *,
        router: str = "topk",
        capacity_factor: float | None = None,
        load_balance_weight: float = 0.01,
        z_loss_weight: float = 1e-3,
        activation: str = "gelu",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if router == "topk":
            self.router: nn.Module = TopKRouter(d_model, num_experts, k, **factory)
        elif router == "noisy_topk":
            self.router = NoisyTopKRouter(d_model, num_experts, k, **factory)
        elif router == "expert_choice":
            if capacity_factor is not None:
                raise ConfigError(
                    "MoE: expert_choice routing has its own capacity; leave capacity_factor None"
                )
            self.router = ExpertChoiceRouter(d_model, num_experts, float(k), **factory)
        else:
            raise ConfigError(f"MoE: router must be one of {ROUTERS}, got {router!r}")
        self.experts = MLPExperts(num_experts, d_model, hidden, activation=activation, **factory)
        self.layer = MoELayer(
            self.experts,
            capacity_factor=capacity_factor,
            load_balance_weight=load_balance_weight,
            z_loss_weight=z_loss_weight,
        )

    def forward(self, x: Tensor) -> MoEOutput:
        routing = self.router(x)
        out = self.layer(x, routing)
        out.flops += self.router.flops(routing.num_tokens)
        return out
