"""Capabilities the training loop asks a model for, as `typing.Protocol`s."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ..outputs import DynamicOutput


@runtime_checkable
class SupportsBaselineUpdate(Protocol):
    """A model trained with REINFORCE whose reward baseline is updated after each step.

    The training loop calls `model.update_baseline(out, target)` after the optimizer step,
    outside `forward` (which never changes module state), with the step's output and
    `(B,)` targets. From your own loop:

    ```python
    if isinstance(model, SupportsBaselineUpdate):
        model.update_baseline(out, y)
    ```
    """

    def update_baseline(self, out: DynamicOutput, target: Tensor) -> Any: ...


@runtime_checkable
class SupportsLabelLosses(Protocol):
    """A model with training losses that need the labels (a model's `forward` never sees
    them), e.g. DS-Net's sandwich gate sparsification, whose gate targets depend on which
    widths classify each sample right.

    The training loop adds every value of `model.label_losses(out, target)` (scalars, by
    name; an empty dict when there is nothing to add) to the loss of each step, with the
    step's output and `(B,)` targets. From your own loop:

    ```python
    extra = model.label_losses(out, y) if isinstance(model, SupportsLabelLosses) else {}
    loss = dynamic_loss(out, y, aux_losses=extra)
    ```
    """

    def label_losses(self, out: DynamicOutput, target: Tensor) -> dict[str, Tensor]: ...


@runtime_checkable
class SupportsTrainingProgress(Protocol):
    """A model whose training losses change with how far training has come (annealed
    loss terms such as DynConv's per-block FLOPs bounds).

    When `uses_training_progress` is true the training loop passes
    `progress=step / total_steps` (a float in `[0, 1]`) to `forward` at every training
    step. From your own loop: `model(x, progress=step / total_steps)`.
    """

    uses_training_progress: bool
