"""Capabilities of models, as `typing.Protocol`s: what the library asks instead of `hasattr`.

Each protocol is `runtime_checkable`: `isinstance(model, MultiExit)` answers whether a
model can be driven by the exit executor, and so on. A user's own model gains a capability
by defining the methods, without inheriting from anything.

- `MultiExit`: separately callable stages and exit heads (early-exit executor, calibration).
- `SkipsComputation`: per-sample skipping (layer skipping, halting, skipped updates); its
  `full_flops` is the cost with nothing skipped.
- `CalibratableGates`: threshold gates whose logit layers can be fitted to an execution
  rate (`calibrate_gate_rate`, `calibrate_gate_policy`).
- `BoundedWorstCase`: a model that states the most any input can cost under a policy's
  compute cap (`dynamicnets.inference.worst_case_flops`).
- `SupportsExecution` (`dynamicnets.execution`), `CostReporting` (`dynamicnets.flops`) and
  `SupportsBaselineUpdate` and `SupportsTrainingProgress` (`dynamicnets.training.protocols`)
  complete the set.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from .execution import SupportsExecution
from .flops import CostReporting


@runtime_checkable
class MultiExit(Protocol):
    """A network with `num_exits` exits whose stages run one at a time.

    `run_segment(k, state, x)` runs stage `k` on the state the previous stage returned
    (`None` before the first; `x` the network input), `exit_logits(k, state)` gives exit
    `k`'s `(B, C)` logits, `exit_costs(input_shape)` the cumulative per-sample FLOPs at
    each exit, and `needs_input_after(k)` whether later stages read the input again.
    """

    num_exits: int

    def run_segment(self, k: int, state: Any, x: Tensor) -> Any: ...

    def exit_logits(self, k: int, state: Any) -> Tensor: ...

    def exit_costs(self, input_shape: tuple[int, ...]) -> list: ...

    def needs_input_after(self, k: int) -> bool: ...


@runtime_checkable
class SkipsComputation(Protocol):
    """A model that skips parts of itself per sample; `full_flops(input_shape)` is the
    per-sample cost when nothing is skipped (a zero input would count what its gates ran)."""

    def full_flops(self, input_shape: tuple[int, ...]) -> float: ...


@runtime_checkable
class CalibratableGates(Protocol):
    """Threshold gates: `gate_logit_layers()` lists the linear layers whose outputs are the
    gate logits, `num_gated_blocks` how many blocks they decide."""

    num_gated_blocks: int

    def gate_logit_layers(self) -> list[nn.Linear]: ...


@runtime_checkable
class BoundedWorstCase(Protocol):
    """`worst_case_flops(input_shape, policy)`: the most per-sample FLOPs inference on an
    input of `input_shape` can cost under `policy`'s compute cap (None: no cap)."""

    def worst_case_flops(self, input_shape: tuple[int, ...], policy: Any = None) -> float: ...


__all__ = ["BoundedWorstCase", "CalibratableGates", "CostReporting", "MultiExit", "SkipsComputation", "SupportsExecution"]
