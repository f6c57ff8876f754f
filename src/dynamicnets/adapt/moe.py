"""A drop-in mixture-of-experts feed-forward block, and one helper to collect its losses.

`MoEFeedForward(d_model, hidden, num_experts, k)` maps `(..., d_model)` to a plain
`(..., d_model)` tensor, so it replaces the MLP of a user's transformer or MLP block as is.
Its router, experts and dispatch are `layers.moe.MoE`'s (same parameters, same keys under
`moe.`):

- `compact` (default in eval): tokens sorted by expert, each expert runs on its own tokens
  only (`layers.moe.MoELayer`);
- `masked` (default in training): every expert on every token, mixed with the combine
  weights of the same routing (zero where a token was not routed or was dropped by
  capacity), static shapes; the same output.

The block's auxiliary losses (`"load_balance"`, the Switch Transformer loss, and
`"router_z"`, the ST-MoE z-loss) and per-token FLOPs cannot travel in a plain tensor.
`collect_aux_losses(model)` is a context manager that hands every `MoEFeedForward` of
`model` a record for the forwards run inside it:

```python
with collect_aux_losses(model) as aux:
    logits = model(x)
loss = dynamic_loss(logits, y, aux_losses=aux.by_kind())
```

Outside the context the blocks record nothing (and keep no state between forwards).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..execution import Execution, ExecutionLike, resolve_execution
from ..layers.moe import MoE, dense_moe, dispatch, kept_weights


@dataclass
class AuxLosses:
    """What the `MoEFeedForward` blocks recorded inside one `collect_aux_losses` context.

    Attributes:
        losses: `{"<block path>/<loss name>": scalar}` (weighted, as the block's weights
            say); a block run several times adds up.
        token_flops: `{"<block path>": (T,) float64}` FLOPs each token ran in the block
            (router included), concatenated over the block's calls.
    """

    losses: dict[str, Tensor] = field(default_factory=dict)
    token_flops: dict[str, Tensor] = field(default_factory=dict)
    _paths: dict[int, str] = field(default_factory=dict, repr=False)

    def add(self, block: nn.Module, losses: dict[str, Tensor], token_flops: Tensor) -> None:
        """Record one call of `block` (called by the block's forward)."""
        path = self._paths.get(id(block), type(block).__name__)
        for name, value in losses.items():
            key = f"{path}/{name}"
            self.losses[key] = self.losses[key] + value if key in self.losses else value
        previous = self.token_flops.get(path)
        self.token_flops[path] = token_flops if previous is None else torch.cat([previous, token_flops])

    def by_kind(self) -> dict[str, Tensor]:
        """The losses summed over blocks, by loss name (`{"load_balance": ..., "router_z": ...}`)."""
        kinds: dict[str, Tensor] = {}
        for key, value in self.losses.items():
            name = key.rsplit("/", 1)[-1]
            kinds[name] = kinds[name] + value if name in kinds else value
        return kinds

    def total(self) -> Tensor:
        """Sum of every recorded loss (a zero scalar when there are none)."""
        values = list(self.losses.values())
        return torch.stack(values).sum() if values else torch.zeros(())


class MoEFeedForward(nn.Module):
    """Mixture-of-experts MLP block returning a plain tensor (see the module docstring).

    Args:
        d_model: token features.
        hidden: hidden units per expert.
        num_experts: `E`.
        k: experts per token (token-choice routers) or mean experts per token
            (`"expert_choice"`).
        router: `"topk"`, `"noisy_topk"` or `"expert_choice"`.
        capacity_factor: None (dropless) or > 0 (token-choice routers only).
        load_balance_weight, z_loss_weight: weights of the aux losses.
        activation: of the experts.

    Attributes:
        moe: the `layers.moe.MoE` holding the router and the experts.

    Shapes:
        `forward(x (..., d_model), *, execution=None) -> (..., d_model)`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

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
        self.moe = MoE(
            d_model, hidden, num_experts, k, router=router, capacity_factor=capacity_factor,
            load_balance_weight=load_balance_weight, z_loss_weight=z_loss_weight,
            activation=activation, device=device, dtype=dtype,
        )
        self._record: AuxLosses | None = None  # set only inside collect_aux_losses

    def forward(self, x: Tensor, *, execution: ExecutionLike = None) -> Tensor:
        """Args:
            x: `(..., d_model)` tokens.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.

        Returns:
            `(..., d_model)`.
        """
        execution = resolve_execution(execution, self.training)
        if execution is Execution.COMPACT:
            out = self.moe(x)
            y, losses, token_flops = out.output, out.aux_losses, out.token_flops
        else:
            y, losses, token_flops = self._masked(x)
        if self._record is not None:
            self._record.add(self, losses, token_flops)
        return y

    def _masked(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        moe = self.moe
        routing = moe.router(x)
        plan = dispatch(routing, moe.layer.capacity_factor)
        y = dense_moe(moe.experts, x, kept_weights(plan, routing.num_tokens))
        per_token = self.token_flops(Execution.MASKED)
        flops = torch.full((routing.num_tokens,), float(per_token), dtype=torch.float64, device=x.device)
        return y, moe.layer.aux_losses(routing, plan), flops

    def token_flops(self, execution: ExecutionLike = Execution.MASKED) -> float:
        """Per-token FLOPs of the masked execution (router, every expert, the mix); the
        compact execution's depend on the routing and are recorded per token instead.

        Raises:
            ConfigError: for `"compact"`.
        """
        if resolve_execution(execution, self.training) is not Execution.MASKED:
            raise ConfigError("MoEFeedForward.token_flops: compact costs depend on the routing; see AuxLosses.token_flops")
        experts = self.moe.experts
        mix = 2 * experts.num_experts * experts.d_model
        return float(self.moe.router.flops(1) + experts.num_experts * experts.flops(1) + mix)


@contextmanager
def collect_aux_losses(model: nn.Module) -> Iterator[AuxLosses]:
    """Collect the aux losses and per-token FLOPs of every `MoEFeedForward` in `model`.

    Args:
        model: any module holding `MoEFeedForward` blocks (at any depth).

    Yields:
        `AuxLosses`, filled by the forwards run inside the `with` block.

    Raises:
        ConfigError: `model` holds no `MoEFeedForward`, or a block is already being
            collected by another context.
    """
    blocks = [(path or "moe", m) for path, m in model.named_modules() if isinstance(m, MoEFeedForward)]
    if not blocks:
        raise ConfigError(f"collect_aux_losses: {type(model).__name__} holds no MoEFeedForward block")
    if any(m._record is not None for _, m in blocks):
        raise ConfigError("collect_aux_losses: these blocks are already being collected (nested contexts)")
    record = AuxLosses()
    for path, block in blocks:
        record._paths[id(block)] = path
        block._record = record
    try:
        yield record
    finally:
        for _, block in blocks:
            block._record = None
