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

Experts: `MLPExperts` take tokens `(d,)`; any module with `num_experts`,
`forward_expert(e, rows (n, *R)) -> (n, *R')`, `forward_dense(rows (T, *R)) -> (E, T, *R')`
and `flops(rows, *R[1:])` works, where a row `R` has `experts.row_dims` dims (1 when the
attribute is absent): `conv_experts.ConvExperts` take whole samples `(C, H, W)`
(`row_dims = 3`), so an image is one token and `flops(rows, H, W)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..compact import add_rows, gather_rows
from ..errors import ConfigError
from .experts import MLPExperts
from ..gates.routers import ExpertChoiceRouter, NoisyTopKRouter, Routing, TopKRouter

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
        flops: FLOPs executed (experts, plus the router for `MoE` and `ConvMoE`), as
            `FlopCounterMode` counts them.
        token_flops: `(T,)` float64, the part of `flops` each token ran (its kept expert
            rows, plus its router row for `MoE` and `ConvMoE`).
        routing: the `Routing` that was executed.
    """

    output: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    kept: Tensor | None = None
    tokens_per_expert: Tensor | None = None
    flops: int = 0
    token_flops: Tensor | None = None
    routing: Routing | None = None


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


def row_dims(experts: nn.Module) -> int:
    """Dims of one row the experts take: 1 for token features `(d,)` (the default), 3 for
    conv experts' samples `(C, H, W)`."""
    return getattr(experts, "row_dims", 1)


def make_router(
    owner: str,
    router: str,
    d_model: int,
    num_experts: int,
    k: int,
    capacity_factor: float | None,
    *,
    device=None,
    dtype=None,
) -> nn.Module:
    """The router named `router` (one of `ROUTERS`) for `(T, d_model)` tokens.

    `k` is the experts per token, or for `"expert_choice"` the mean experts per token (its
    own capacity factor; `capacity_factor` must then be None). Errors name `owner`.
    """
    factory = {"device": device, "dtype": dtype}
    if router == "topk":
        return TopKRouter(d_model, num_experts, k, **factory)
    if router == "noisy_topk":
        return NoisyTopKRouter(d_model, num_experts, k, **factory)
    if router == "expert_choice":
        if capacity_factor is not None:
            raise ConfigError(
                f"{owner}: expert_choice routing has its own capacity; leave capacity_factor None"
            )
        return ExpertChoiceRouter(d_model, num_experts, float(k), **factory)
    raise ConfigError(f"{owner}: router must be one of {ROUTERS}, got {router!r}")


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
    # counts by scatter-add, not bincount: same result, and it runs on meta tensors
    routed = torch.zeros(num_experts, dtype=torch.long, device=experts.device).scatter_add_(
        0, experts, torch.ones_like(experts)
    )
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
        experts: `MLPExperts`, `ConvExperts` or any experts as in the module doc.
        capacity_factor: None (dropless) or > 0; capacity per expert as in `capacity`.
        load_balance_weight, z_loss_weight: weights of the aux losses.

    Shapes:
        `forward(x, routing)`: `(..., d)` with `T = prod(...)` tokens and a `Routing` over
        those `T` tokens -> `MoEOutput` with `output (..., d)`. For experts with
        `row_dims = 3`: `(B, C, H, W)`, `T = B` -> `output (B, C', H', W')`.
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
        lead = x.dim() - row_dims(self.experts)
        tokens = x.reshape(-1, *x.shape[lead:])
        if routing.num_tokens != tokens.shape[0] or routing.num_experts != self.experts.num_experts:
            raise ConfigError(
                f"MoELayer: routing is for {routing.num_tokens} tokens x {routing.num_experts} "
                f"experts, the input has {tokens.shape[0]} tokens and the layer "
                f"{self.experts.num_experts} experts"
            )
        plan = dispatch(routing, self.capacity_factor)
        rows = gather_rows(tokens, plan.token_ids)
        outputs = self._run_experts(rows, plan)
        if not outputs:  # every row dropped: an empty expert call gives the output shape
            outputs = [(slice(0, 0), self.experts.forward_expert(0, rows))]
        out = self._combine(outputs, plan, tokens, routing)
        row_flops = self.experts.flops(1, *tokens.shape[2:])
        token_rows = torch.bincount(plan.token_ids, minlength=tokens.shape[0])
        return MoEOutput(
            output=out.view(*x.shape[:lead], *out.shape[1:]),
            aux_losses=self.aux_losses(routing, plan),
            kept=plan.kept,
            tokens_per_expert=plan.counts,
            flops=row_flops * plan.token_ids.numel(),
            token_flops=token_rows.to(torch.float64) * row_flops,
            routing=routing,
        )

    def _run_experts(self, rows: Tensor, plan: Dispatch) -> list[tuple[slice, Tensor]]:
        """Each expert on its contiguous block of `rows`, scaled by the combine weights."""
        outputs, start = [], 0
        for e, n in enumerate(plan.counts.tolist()):
            if n:
                block = slice(start, start + n)
                y = self.experts.forward_expert(e, rows[block])
                w = plan.weights[block].to(y.dtype).view(-1, *[1] * (y.dim() - 1))
                outputs.append((block, y.mul_(w)))
            start += n
        return outputs

    @staticmethod
    def _combine(outputs, plan: Dispatch, tokens: Tensor, routing: Routing) -> Tensor:
        """Weighted expert rows back to their tokens: `(T, *R')` (`R'` an expert output row)."""
        row, dtype = outputs[0][1].shape[1:], outputs[0][1].dtype  # autocast may run experts below tokens' dtype
        if plan.slots is None:  # expert choice: a token may have any number of rows
            out = tokens.new_zeros(tokens.shape[0], *row, dtype=dtype)
            for block, y in outputs:
                out = add_rows(out, plan.token_ids[block], y)
            return out
        # token choice: each token has k slots; put every row in its slot, sum the slots
        t, k = routing.expert_indices.shape
        dropped = plan.slots.numel() < t * k
        slots = (tokens.new_zeros if dropped else tokens.new_empty)(t * k, *row, dtype=dtype)
        for block, y in outputs:
            slots.index_copy_(0, plan.slots[block], y)
        return slots.view(k, t, *row).sum(0)

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


def kept_weights(plan: Dispatch, num_tokens: int) -> Tensor:
    """The combine weights of a dispatch's kept assignments as a dense `(T, E)` matrix.

    Zero where not routed or dropped by capacity; without drops, `combine_weights(routing)`.
    """
    experts = torch.repeat_interleave(  # output_size given: no host sync, runs on meta tensors
        torch.arange(plan.counts.numel(), device=plan.counts.device), plan.counts,
        output_size=plan.token_ids.numel(),
    )
    dense = plan.weights.new_zeros(num_tokens, plan.counts.numel())
    return dense.index_put((plan.token_ids, experts), plan.weights, accumulate=True)


def dense_moe(experts: nn.Module, x: Tensor, weights: Tensor) -> Tensor:
    """Soft-weight fusion: every expert on every token, `sum_e weights[:, e] * expert_e(x)`.

    Args:
        experts: the experts (`MLPExperts`, `ConvExperts`, ...).
        x: `(..., d)` tokens (for conv experts `(B, C, H, W)`, `T = B`).
        weights: `(T, E)` per-token weights (e.g. `routing.scores`, `combine_weights`
            or `kept_weights`).

    Returns:
        `(..., d)` (for conv experts `(B, C', H', W')`). FLOPs: `E` expert rows per token
        plus the mix, `2 * E` per output element (a batched matmul).
    """
    lead = x.dim() - row_dims(experts)
    all_out = experts.forward_dense(x.reshape(-1, *x.shape[lead:]))  # (E, T, *R')
    mixed = torch.einsum("te,et...->t...", weights.to(all_out.dtype), all_out)
    return mixed.view(*x.shape[:lead], *mixed.shape[1:])


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
        self.router = make_router(
            "MoE", router, d_model, num_experts, k, capacity_factor, **factory
        )
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
        out.token_flops += self.router.flops(1)
        return out
