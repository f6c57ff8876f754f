"""The one structured output every dynamicnets model returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree
from torch import Tensor


@dataclass
class DynamicOutput:
    """What a dynamic (or static) model returns, whatever its mode.

    Attributes:
        logits: `(B, C)` final prediction of the model (for an early-exit network at
            inference, the logits of the exit each sample took).
        exit_logits: list of `(B, C)` tensors, one per exit, shallowest first. A
            single-exit model has `[logits]`. At compact inference an exit's tensor may
            hold only the samples that reached it; see the executor's own record then.
        decisions: per-sample decisions by name, each a tensor whose first dim is `B`
            (gate values, exit index, chosen width, routed expert, ...).
        aux_losses: scalar losses to add to the task loss while training (target rate,
            load balance, ponder cost, ...), by name.
        flops: `(B,)` float64 FLOPs each sample actually executed, counted like
            `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add of
            convolutions and matrix products; biases, norms and activations not counted).
    """

    logits: Tensor
    exit_logits: list[Tensor] = field(default_factory=list)
    decisions: dict[str, Tensor] = field(default_factory=dict)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    flops: Tensor | None = None

    def __post_init__(self) -> None:
        if not self.exit_logits:
            self.exit_logits = [self.logits]

    @property
    def batch_size(self) -> int:
        return self.logits.shape[0]

    def aux_loss(self) -> Tensor:
        """Sum of `aux_losses` (a zero scalar on `logits`' device when there are none)."""
        total = self.logits.new_zeros(())
        for value in self.aux_losses.values():
            total = total + value
        return total

    def mean_flops(self) -> float:
        if self.flops is None:
            raise ValueError("this output carries no per-sample FLOPs")
        return float(self.flops.double().mean())


def _flatten(out: DynamicOutput) -> tuple[list, None]:
    return [out.logits, out.exit_logits, out.decisions, out.aux_losses, out.flops], None


def _unflatten(children: list, _context: None) -> DynamicOutput:
    return DynamicOutput(*children)


def _flatten_with_keys(out: DynamicOutput) -> tuple[list, None]:
    children, context = _flatten(out)
    return [(pytree.GetAttrKey(name), child) for name, child in zip(_FIELDS, children)], context


_FIELDS = ("logits", "exit_logits", "decisions", "aux_losses", "flops")

# A registered pytree: `torch.export`, `torch.compile`, `torch.jit.trace` (with
# `strict=False`) and `torch.utils._pytree.tree_map` see through a DynamicOutput.
pytree.register_pytree_node(
    DynamicOutput, _flatten, _unflatten,
    serialized_type_name="dynamicnets.outputs.DynamicOutput",
    flatten_with_keys_fn=_flatten_with_keys,
)


def constant_flops(flops_per_sample: float, batch_size: int, device=None) -> Tensor:
    """`(B,)` float64 tensor filled with one per-sample cost (for static paths)."""
    return torch.full((batch_size,), float(flops_per_sample), dtype=torch.float64, device=device)
