"""What an attack differentiates: a model's exit logits, final logits and gate logits,
computed on the whole batch (masked), with the model in eval mode."""
from __future__ import annotations

from torch import Tensor, nn

from ..execution import Execution, supported_executions
from ..inference.gate_rate import gate_logit_layers
from ..protocols import MultiExit


def masked_forward(model: nn.Module, x: Tensor):
    """`model(x)` with masked execution where the model offers one (every sample runs
    everything, decisions applied as masks: differentiable in `x`)."""
    if Execution.MASKED in supported_executions(model):
        return model(x, execution=Execution.MASKED)
    return model(x)


def all_exit_logits(model: nn.Module, x: Tensor) -> list[Tensor]:
    """`K` tensors `(B, C)`, every exit of a `MultiExit` model on the whole batch.

    Runs the stages through the protocol (`run_segment` / `exit_logits`), so the gradient
    is the network's own (no training-time gradient rescaling such as gradient
    equilibrium).
    """
    state, logits = None, []
    for k in range(model.num_exits):
        state = model.run_segment(k, state, x)
        logits.append(model.exit_logits(k, state))
    return logits


def final_logits(model: nn.Module, x: Tensor) -> Tensor:
    """`(B, C)` logits of the full network: the last exit of a multi-exit model, else
    `logits` of the masked forward."""
    if isinstance(model, MultiExit):
        return all_exit_logits(model, x)[-1]
    return masked_forward(model, x).logits


def gate_logits(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Every output of `model.gate_logit_layers()` during one masked forward of `x`, in
    the order they ran (a shared layer, such as SkipNet's recurrent gate, once per block).

    Raises:
        ConfigError: the model has no calibratable gates.
    """
    captured: list[Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o)) for layer in gate_logit_layers(model)]
    try:
        masked_forward(model, x)
    finally:
        for hook in hooks:
            hook.remove()
    return captured

