"""One loss for training any dynamic model from your own loop.

```python
out = model(x)                                   # DynamicOutput, or plain logits
loss = dynamic_loss(out, y, distill_weight=0.5)  # exits + aux losses + distillation
loss.backward()
```

`loss_terms` gives the parts apart (for logging): `task` (the exits' cross-entropy,
`multi_exit_loss`), `aux` (the model's `aux_losses` plus any passed in, e.g. those of
drop-in MoE blocks from `dynamicnets.adapt.collect_aux_losses` or a model's
`label_losses(out, y)`), `distill` (every earlier exit, or narrower width, learning
from the last one, `exit_distillation_loss`) and `total`, their sum. It is what the
`Trainer` optimises.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from ..errors import ConfigError
from ..outputs import DynamicOutput
from .distillation import exit_distillation_loss
from .losses import multi_exit_loss


def loss_terms(
    out: DynamicOutput | Tensor,
    target: Tensor,
    *,
    exit_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    aux_losses: Mapping[str, Tensor] | None = None,
    include_model_aux: bool = True,
    distill_weight: float = 0.0,
    distill_temperature: float = 3.0,
) -> dict[str, Tensor]:
    """The parts of `dynamic_loss`, each a `()` float32 scalar.

    Args:
        out: a model's `DynamicOutput`, or `(B, C)` logits of a model returning a tensor.
        target: `(B,)` int64 class indices.
        exit_weights: one weight per exit (normalised to sum 1); None weighs them equally.
        label_smoothing: cross-entropy label smoothing in `[0, 1)`.
        aux_losses: more scalar losses to add, by name (e.g. `collect_aux_losses(...)`).
        include_model_aux: add `out.aux_losses` (target rate, load balance, ponder, ...).
        distill_weight: weight of the self-distillation term (0: none).
        distill_temperature: its softmax temperature.

    Returns:
        `{"task", "aux", "distill", "total"}`.

    Raises:
        ConfigError: `out` is neither a `DynamicOutput` nor a tensor, or bad weights.
    """
    if isinstance(out, Tensor):
        out = DynamicOutput(logits=out)
    elif not isinstance(out, DynamicOutput):
        raise ConfigError(f"dynamic_loss: out must be a DynamicOutput or a logits tensor, got {type(out).__name__}")
    task = multi_exit_loss(out, target, exit_weights, label_smoothing)
    aux = out.aux_loss().float() if include_model_aux else task.new_zeros(())
    for value in (aux_losses or {}).values():
        aux = aux + value.float()
    distill = (exit_distillation_loss(out, distill_temperature, distill_weight)
               if distill_weight > 0 else task.new_zeros(()))
    return {"task": task, "aux": aux, "distill": distill, "total": task + aux + distill}


def dynamic_loss(out: DynamicOutput | Tensor, target: Tensor, **kwargs) -> Tensor:
    """`task + aux + distill` of `loss_terms(out, target, **kwargs)`: a `()` float32 scalar."""
    return loss_terms(out, target, **kwargs)["total"]
