"""How a dynamic layer or model turns its decisions into computation.

One vocabulary for every family:

- `Execution.MASKED`: static shapes. Everything runs on the whole batch and the decisions
  mix, mask or weight the results (hard, straight-through or soft decisions). What
  training needs: every parameter gets a gradient, nothing syncs with the host, and the
  graph can be exported or compiled as one piece.
- `Execution.COMPACT`: only what the hard decisions keep runs (samples that skip a block
  leave it, widths are weight slices, experts see their own tokens). What inference needs
  to turn decisions into real savings. Shapes depend on the data.
- `Execution.INDEXED`: compact, but the active weights are *copied* by index on every
  call instead of sliced as views. Only slimmable layers offer it; it exists to measure
  what copying weights costs (DS-Net's "indexing" baseline).

`resolve_execution(None, training)` is the one default: masked in training, compact in
evaluation.
"""
from __future__ import annotations

from enum import Enum
from typing import Protocol, runtime_checkable

import torch

from .errors import ConfigError


class Execution(str, Enum):
    """Execution mode of a dynamic layer or model (a `str`, so `"masked"` compares equal)."""

    MASKED = "masked"
    COMPACT = "compact"
    INDEXED = "indexed"

    def __str__(self) -> str:
        return self.value


ExecutionLike = Execution | str | None


def parse_execution(execution: Execution | str, allowed: tuple[Execution, ...] = (
        Execution.MASKED, Execution.COMPACT)) -> Execution:
    """`execution` as an `Execution`, checked against the modes the caller supports.

    Raises:
        ConfigError: an unknown name, or a mode outside `allowed`.
    """
    try:
        mode = Execution(execution)
    except ValueError:
        mode = None
    if mode is None or mode not in allowed:
        names = ", ".join(repr(m.value) for m in allowed)
        raise ConfigError(f"execution must be one of {names}, got {execution!r}")
    return mode


def resolve_execution(execution: ExecutionLike, training: bool,
                      allowed: tuple[Execution, ...] = (Execution.MASKED, Execution.COMPACT), *,
                      static_shapes: bool = False) -> Execution:
    """The execution to use: `execution` when given, else masked in training, compact in eval.

    Args:
        execution: an `Execution`, its name, or None for the default.
        training: the module's `training` flag.
        allowed: the modes the caller supports.
        static_shapes: the caller's compact path has shapes that follow from the input's
            shape alone (a token count fixed by a keep ratio), so it may be traced.

    Raises:
        ConfigError: an unknown or unsupported mode.
    """
    mode = (Execution.MASKED if training else Execution.COMPACT) if execution is None else (
        parse_execution(execution, allowed))
    if mode is not Execution.MASKED and not static_shapes:
        refuse_tracing("compact execution")
    return mode


def refuse_tracing(what: str) -> None:
    """Raise when `torch.jit.trace` or `torch.export` is recording the caller.

    Compact paths take data-dependent decisions (which samples run a block, where a sample
    exits): a trace would freeze the decisions of its example input and give wrong results
    on every other input, and `torch.export` cannot express the shapes.

    Raises:
        ConfigError: while tracing or exporting, naming the exportable alternative.
    """
    if torch.jit.is_tracing() or torch.compiler.is_exporting():
        raise ConfigError(
            f"{what} takes data-dependent decisions and cannot be traced or exported (a trace would "
            f"freeze the example's decisions); export the masked path instead, "
            f"`model(x, execution=Execution.MASKED)` in eval mode, or export the model's separately "
            f"callable stages and drive them with the compact runtime"
        )


@runtime_checkable
class SupportsExecution(Protocol):
    """A model whose `forward(x, *, execution=None)` takes an `Execution` (dynamic models).

    `execution_modes` lists what it supports; the Trainer and the exporters ask this
    protocol instead of inspecting signatures.
    """

    execution_modes: tuple[Execution, ...]


def supported_executions(model: object) -> tuple[Execution, ...]:
    """The execution modes `model` accepts as a forward argument (empty for static models)."""
    return tuple(model.execution_modes) if isinstance(model, SupportsExecution) else ()
