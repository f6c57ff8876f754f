"""`MoEMlp`: the feed-forward layer of a transformer block as a mixture of MLP experts.

A token-choice router (Switch Transformer, Fedus et al. 2021, for `k = 1`; GShard, Lepikhin
et al. 2020, for `k = 2`) sends each token to `k` of `E` MLP experts (`MLPExperts`); the
layer is the library's `moe.MoELayer` machinery:

- `"compact"` (default in eval): tokens sorted by expert, each expert runs on its own
  tokens only (`MoELayer`'s dispatch);
- `"masked"` (default in training): static shapes, every expert on every token
  (`moe.dense_moe`), mixed with the kept combine weights of the same routing (zero where a
  token was not routed or was dropped by capacity); the same output as compact.

`run(x, routing=None, execution=None)` returns the whole `MoEOutput` (output, the
weighted aux losses `"load_balance"` / `"router_z"`, the FLOPs each token ran); a model
sums those into its `DynamicOutput`. `forward(x)` returns the output tensor alone, so the
layer is a drop-in `mlp` of a `TransformerBlock` and runs on packed `(T, D)` rows of a
ragged token batch (`token_batching.run_blocks`); the aux losses of such a call are not
returned (compact inference needs none; call `run` on the rows to get them).

Costs per token (FLOPs as `FlopCounterMode` counts them, biases free): router `2 D E`;
compact `k` expert rows of `4 D h` each (fewer where capacity drops an assignment);
masked all `E` expert rows plus the mix, `E (4 D h + 2 D)`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..execution import Execution, ExecutionLike, resolve_execution
from ..gates.routers import NoisyTopKRouter, Routing, TopKRouter
from .experts import MLPExperts
from .moe import MoELayer, MoEOutput, dense_moe, dispatch, kept_weights

TOKEN_ROUTERS = ("topk", "noisy_topk")


class MoEMlp(nn.Module):
    """Router + `MLPExperts` + `MoELayer` for `(..., D)` tokens (see the module docstring).

    Args:
        dim: token width `D`.
        hidden: hidden units `h` of each expert (the dense MLP's width makes a token's
            compact cost at `k = 1` that of the dense MLP, plus the router).
        num_experts: `E`.
        k: experts per token.
        router: `"topk"` or `"noisy_topk"`.
        normalize_weights: for `"topk"`, rescale the `k` kept probabilities to sum to 1.
            None: False for `k = 1` (Switch: the weight is the router probability, so the
            router learns from the task loss), True for `k > 1` (GShard, Mixtral).
        capacity_factor: None (dropless) or > 0: each expert takes at most
            `ceil(capacity_factor * T * k / E)` of the `T` tokens of a call.
        load_balance_weight, z_loss_weight: weights of the aux losses.
        activation: of the experts.

    Attributes:
        router, experts (`MLPExperts`, `w1 (E, D, h)`, `b1`, `w2 (E, h, D)`, `b2`), layer
        (`MoELayer`, sharing `experts`).

    Shapes:
        `forward(x (..., D), *, execution=None) -> (..., D)`;
        `run(x (..., D), routing=None, execution=None) -> MoEOutput` with `output (..., D)`
        and `token_flops (T,)`, `T = prod(...)`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(self, dim: int, hidden: int, num_experts: int = 4, k: int = 1, *, router: str = "topk",
                 normalize_weights: bool | None = None, capacity_factor: float | None = None,
                 load_balance_weight: float = 0.01, z_loss_weight: float = 1e-3, activation: str = "gelu",
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if router == "topk":
            normalize = k > 1 if normalize_weights is None else bool(normalize_weights)
            self.router = TopKRouter(dim, num_experts, k, normalize_weights=normalize, **factory)
        elif router == "noisy_topk":
            if normalize_weights is not None:
                raise ConfigError("MoEMlp: normalize_weights applies to router='topk' only (noisy_topk "
                                  "weights are a softmax over the k chosen logits)")
            self.router = NoisyTopKRouter(dim, num_experts, k, **factory)
        else:
            raise ConfigError(f"MoEMlp: router must be one of {TOKEN_ROUTERS}, got {router!r}")
        self.experts = MLPExperts(num_experts, dim, hidden, activation=activation, **factory)
        self.layer = MoELayer(self.experts, capacity_factor=capacity_factor,
                              load_balance_weight=load_balance_weight, z_loss_weight=z_loss_weight)
        self.dim, self.hidden, self.num_experts, self.k = dim, hidden, num_experts, k

    def forward(self, x: Tensor, *, execution: ExecutionLike = None) -> Tensor:
        """`(..., D) -> (..., D)`: `run(x, execution=execution).output` (aux losses dropped)."""
        return self.run(x, execution=execution).output

    def run(self, x: Tensor, routing: Routing | None = None, execution: ExecutionLike = None) -> MoEOutput:
        """Route (unless `routing` is given) and run the experts.

        Args:
            x: `(..., D)` tokens, `T = prod(...)` of them.
            routing: a decision over the `T` tokens (e.g. one recorded earlier); None asks
                the router. Its cost is then not counted (the router did not run).
            execution: `"masked"` / `"compact"`; None: masked in training, compact in eval.

        Returns:
            `MoEOutput`: `output (..., D)`, `aux_losses`, `kept (T, k)`, `flops` and
            `token_flops (T,)` float64 (router included when it ran), `routing`.
        """
        execution = resolve_execution(execution, self.training)
        router_flops = 0
        if routing is None:
            routing = self.router(x)
            router_flops = self.router.flops(1)
        tokens = routing.num_tokens
        if execution is Execution.COMPACT:
            out = self.layer(x, routing)
        else:
            out = self._masked(x, routing)
        out.flops += router_flops * tokens
        out.token_flops = out.token_flops + router_flops
        return out

    def _masked(self, x: Tensor, routing: Routing) -> MoEOutput:
        if routing.num_tokens != x.numel() // self.dim or routing.num_experts != self.num_experts:
            raise ConfigError(
                f"MoEMlp: routing is for {routing.num_tokens} tokens x {routing.num_experts} experts, the "
                f"input has {x.numel() // self.dim} tokens and the layer {self.num_experts} experts"
            )
        plan = dispatch(routing, self.layer.capacity_factor)
        y = dense_moe(self.experts, x, kept_weights(plan, routing.num_tokens))
        per_token = self.masked_token_flops()
        return MoEOutput(
            output=y,
            aux_losses=self.layer.aux_losses(routing, plan),
            kept=plan.kept,
            tokens_per_expert=torch.full_like(plan.counts, routing.num_tokens),
            flops=per_token * routing.num_tokens,
            token_flops=torch.full((routing.num_tokens,), float(per_token), dtype=torch.float64,
                                   device=x.device),
            routing=routing,
        )

    def expert_row_flops(self) -> int:
        """FLOPs of one token through one expert: `4 D h`."""
        return self.experts.flops(1)

    def masked_token_flops(self) -> int:
        """Per-token FLOPs of the masked execution without the router: all `E` experts and the mix."""
        return self.num_experts * (self.expert_row_flops() + 2 * self.dim)

    def flops(self, tokens: int) -> int:
        """Per-sample FLOPs of the compact execution on `tokens` tokens with no assignment
        dropped (exact for `capacity_factor=None`, an upper bound otherwise): router and
        `k` expert rows per token. `TransformerBlock.flops` and `token_batching` read it."""
        return tokens * (self.router.flops(1) + self.k * self.expert_row_flops())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, num_experts={self.num_experts}, k={self.k}"
