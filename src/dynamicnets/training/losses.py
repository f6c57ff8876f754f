"""Task loss of a (multi-exit) classifier.

The model's auxiliary losses (`DynamicOutput.aux_losses`: target rate, load balance,
ponder cost, ...) are *not* added here: the trainer adds `out.aux_loss()` itself and
logs the two parts apart.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..outputs import DynamicOutput


def normalized_exit_weights(weights: Sequence[float] | None, num_exits: int) -> list[float]:
    """Weights of `num_exits` exits scaled to sum to 1 (equal weights when None).

    Raises:
        ConfigError: (key `exit_weights`) wrong length, a negative value or a zero sum.
    """
    if weights is None:
        return [1.0 / num_exits] * num_exits
    weights = [float(w) for w in weights]
    if len(weights) != num_exits:
        raise ConfigError(
            f"key 'exit_weights': got {len(weights)} weights but the model has {num_exits} exit(s)"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"key 'exit_weights': expected numbers >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def multi_exit_loss(
    out: DynamicOutput,
    target: Tensor,
    weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Weighted mean of the cross-entropy of every exit.

    Args:
        out: model output; `out.exit_logits` is a list of `(B, C)` logits, one per exit.
        target: `(B,)` int64 class indices.
        weights: one weight per exit (normalised to sum 1); None weighs exits equally.
        label_smoothing: cross-entropy label smoothing in [0, 1).

    Returns:
        `()` float32 scalar: `sum_k w_k * CE(exit_logits[k], target)` (each CE a batch mean).
    """
    ws = normalized_exit_weights(weights, len(out.exit_logits))
    total = torch.zeros((), dtype=torch.float32, device=target.device)
    # A zero-weight exit still enters the sum, so its head gets a (zero) gradient and DDP
    # needs no `find_unused_parameters`.
    for w, logits in zip(ws, out.exit_logits):
        ce = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
        total = total + w * ce
    return total
