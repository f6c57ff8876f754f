"""Sample-level mixture of conv experts: a router picks experts per image.

`ConvMoE` routes each sample (not each pixel): the router reads the global-average-pooled
input `(B, C_in)` and picks `k` of `E` `ConvExperts` per sample (any router of
`routers`); `y_b = sum_{e chosen for b} w_be conv_e(x_b)`. Aux losses and capacity are
`moe.MoELayer`'s (`"load_balance"`, `"router_z"`; `capacity_factor=None` is dropless).
With a capacity, which samples get dropped depends on the rest of the batch (so does
expert-choice routing): keep both off where a sample's output must not depend on its
batch.

Two executions of the same routing (`execution`, None = `"masked"` in training,
`"compact"` in eval, the project rule):

- `"compact"`: `MoELayer`'s sorted dispatch, each expert convolves only its own samples.
  Per-sample FLOPs: the router plus the sample's `k` (kept) expert convolutions.
- `"masked"`: static shapes, every expert on every sample (`dense_moe`), mixed by the
  kept combine weights (`kept_weights`: zero for experts not chosen or dropped), so the
  output and every gradient equal the compact path's. Per-sample FLOPs: the router, `E`
  convolutions and the mix (`2 E` per output element, a batched matmul).

`dense_moe(experts, x, routing.scores)` is the soft special case: all experts fused
with the full router probabilities.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..outputs import constant_flops
from .conv_experts import ConvExperts
from ..execution import Execution, ExecutionLike, parse_execution, resolve_execution
from .moe import (
    MoELayer,
    MoEOutput,
    combine_weights,
    dense_moe,
    dispatch,
    kept_weights,
    make_router,
)
from ..gates.routers import Routing


class ConvMoE(nn.Module):
    """Router on the pooled input + `ConvExperts` + `MoELayer`, routing whole samples.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: of each expert's
            conv (see `ConvExperts`; padding None keeps the size at stride 1).
        num_experts: `E`.
        k: experts per sample (token-choice routers) or mean experts per sample
            (`"expert_choice"`).
        router: `"topk"`, `"noisy_topk"` or `"expert_choice"`.
        capacity_factor: None (dropless) or > 0: each expert takes at most
            `ceil(capacity_factor * B * k / E)` samples of a batch (token-choice only).
        load_balance_weight, z_loss_weight: aux loss weights.

    Attributes:
        router (on `in_channels` features), experts (`ConvExperts`), layer (`MoELayer`).

    Shapes:
        `forward(x (B, C_in, H, W), execution=None)` -> `MoEOutput` with `output
        (B, C_out, H', W')`, `token_flops (B,)` (router included), `routing` over `B`
        samples and `kept` (`(B, k)`, or `(E, C)` for expert choice).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        *,
        num_experts: int = 4,
        k: int = 1,
        router: str = "topk",
        capacity_factor: float | None = None,
        load_balance_weight: float = 0.01,
        z_loss_weight: float = 1e-3,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.experts = ConvExperts(
            num_experts, in_channels, out_channels, kernel_size, stride, padding, bias=bias,
            **factory,
        )
        self.router = make_router(
            "ConvMoE", router, in_channels, num_experts, k, capacity_factor, **factory
        )
        self.layer = MoELayer(
            self.experts,
            capacity_factor=capacity_factor,
            load_balance_weight=load_balance_weight,
            z_loss_weight=z_loss_weight,
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_experts = num_experts

    def route(self, x: Tensor) -> Routing:
        """The router's decision on the pooled samples: `(B, C_in, H, W) -> Routing` over `B`."""
        self._check_input(x)
        return self.router(x.mean(dim=(2, 3)))

    def run(self, x: Tensor, routing: Routing, execution: Execution | str = Execution.COMPACT) -> MoEOutput:
        """Execute a routing (see the module doc); `flops`/`token_flops` exclude the router.

        Args:
            x: `(B, C_in, H, W)`.
            routing: over the `B` samples and `E` experts.
            execution: `"compact"` or `"masked"`.

        Returns:
            `MoEOutput` with `output (B, C_out, H', W')`.
        """
        self._check_input(x)
        if parse_execution(execution) is Execution.COMPACT:
            return self.layer(x, routing)  # checks that the routing fits the batch
        batch, e = x.shape[0], self.num_experts
        if routing.num_tokens != batch or routing.num_experts != e:
            raise ConfigError(
                f"ConvMoE: routing is for {routing.num_tokens} samples x {routing.num_experts} "
                f"experts, the input has {batch} samples and the layer {e} experts"
            )
        plan = dispatch(routing, self.layer.capacity_factor)
        y = dense_moe(self.experts, x, kept_weights(plan, batch))
        per_sample = self.experts.flops(e, *x.shape[2:]) + 2 * e * y[0].numel()
        return MoEOutput(
            output=y,
            aux_losses=self.layer.aux_losses(routing, plan),
            kept=plan.kept,
            tokens_per_expert=torch.full_like(plan.counts, batch),
            flops=per_sample * batch,
            token_flops=constant_flops(per_sample, batch, x.device),
            routing=routing,
        )

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"ConvMoE: expected input of shape (B, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}"
            )

    def router_flops(self) -> int:
        """Per-sample FLOPs of the router (as run in the current train/eval mode)."""
        return self.router.flops(1)

    def forward(self, x: Tensor, execution: ExecutionLike = None) -> MoEOutput:
        """Route and run: `(B, C_in, H, W) -> MoEOutput`, FLOPs including the router."""
        execution = resolve_execution(execution, self.training)
        routing = self.route(x)
        out = self.run(x, routing, execution)
        out.flops += self.router_flops() * x.shape[0]
        out.token_flops = out.token_flops + self.router_flops()
        return out


def expert_mask(out: MoEOutput) -> Tensor:
    """`(T, E)` bool: which experts ran on each token (kept assignments of `out.routing`)."""
    routing = out.routing
    mask = torch.zeros(routing.scores.shape, dtype=torch.bool, device=routing.scores.device)
    if routing.expert_choice:
        experts = torch.arange(routing.num_experts, device=mask.device)[:, None]
        return mask.index_put((routing.expert_indices, experts.expand_as(out.kept)), out.kept)
    return mask.scatter(1, routing.expert_indices, out.kept)


def sample_decisions(out: MoEOutput) -> dict[str, Tensor]:
    """Per-sample (per-token) decisions of an executed routing, detached.

    Returns:
        `"experts"`: `(T, E)` bool, the experts that ran; `"expert_weights"`: `(T, E)`
        their combine weights (0 elsewhere); for token-choice routers also
        `"expert_indices"`: `(T, k)` int64 chosen experts, `-1` where capacity dropped one.
    """
    routing = out.routing
    mask = expert_mask(out)
    decisions = {
        "experts": mask,
        "expert_weights": (combine_weights(routing) * mask).detach(),
    }
    if not routing.expert_choice:
        decisions["expert_indices"] = routing.expert_indices.masked_fill(~out.kept, -1)
    return decisions
