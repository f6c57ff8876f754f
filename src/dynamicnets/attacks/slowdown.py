"""Slowdown attacks: inputs crafted so that a dynamic network computes as much as it can.

DeepSloth (Hong, Kaya, Modoranu, Lin, Dumitras, "A Panda? No, It's a Sloth: Slowdown
Attacks on Adaptive Multi-Exit Neural Network Inference", ICLR 2021) pushes the output of
every internal exit toward the uniform distribution, so that no confidence criterion
(max-probability, entropy, margin) fires before the last exit. Its loss, minimised by
L-infinity PGD, is the cross-entropy of each internal exit's softmax with the uniform
target, summed over the internal exits (the final exit takes every sample anyway):

    L(x) = sum_{k < K-1} mean_b [ -(1/C) sum_c log softmax(z_k(x_b))_c ]
         = sum_{k < K-1} mean_b KL(u || softmax(z_k(x_b))) + (K - 1) log C.

`slowdown_attack` minimises that KL form (the same gradient; here summed over the batch,
which leaves the signed steps unchanged). The start is uniform in `[-step_size,
step_size]` around the clean pixels, as in the authors' implementation.

The same idea for layer-skipping networks (SkipNet, ConvNet-AIG, BlockDrop, whose gates
execute a block where a logit is `> 0` at inference): every gate logit is pushed up, by
minimising `sum softplus(-logit)` (the cross-entropy of each gate with the target
"execute"), so every block runs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..protocols import CalibratableGates, MultiExit
from ..module_modes import evaluating
from .arguments import check_attack
from .input_space import InputSpace
from .model_outputs import all_exit_logits, gate_logits
from .pgd import projected_gradient_ascent


def uniform_exit_loss(exit_logits: list[Tensor]) -> Tensor:
    """`sum_{k < K-1} sum_b KL(u || softmax(exit_logits[k][b]))`, a scalar.

    Args:
        exit_logits: `K` tensors `(B, C)`, shallowest first; the last one is not used.

    Returns:
        `()` float tensor, 0 exactly when every internal exit predicts the uniform
        distribution.
    """
    total = exit_logits[0].new_zeros(())
    for logits in exit_logits[:-1]:
        log_p = F.log_softmax(logits.float(), dim=1)
        num_classes = logits.shape[1]
        total = total + (-math.log(num_classes) - log_p.mean(dim=1)).sum()
    return total


def execute_all_loss(logits: list[Tensor]) -> Tensor:
    """`sum softplus(-logit)` over every gate logit: small when every gate executes."""
    return sum(F.softplus(-z.float()).sum() for z in logits)


def slowdown_attack(
    model: nn.Module,
    x: Tensor,
    *,
    eps,
    steps: int,
    step_size=None,
    norm: str = "linf",
    space: InputSpace | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DeepSloth: L-infinity PGD toward uniform internal exits (or all gates on).

    Args:
        model: a multi-exit model (the `MultiExit` protocol, >= 2 exits) or a gated
            model with calibratable gates (`CalibratableGates`: `skipnet_resnet`,
            `convnet_aig_resnet`, `blockdrop_resnet`). Crafted in eval mode on the
            masked forward (every exit / every block on every sample); the model's modes
            are restored afterwards, its parameters get no gradient.
        x: `(B, *input_shape)` model inputs, prepared as in training.
        eps: radius in pixel units (e.g. `8/255` or `"8/255"`).
        steps: gradient steps (>= 1).
        step_size: pixel change per step; `None`: `2.5 * eps / steps`.
        norm: `"linf"`.
        space: pixel space of `x` (`InputSpace.from_preprocessing`); default pixels in
            [0, 1] fed as they are.
        generator: for the random start.

    Returns:
        `(B, *input_shape)` adversarial model inputs (no labels are used).

    Raises:
        ConfigError: naming `model` (no early exits or gates to defeat), `eps`, `steps`,
            `step_size` or `norm`.
    """
    eps, steps, step = check_attack(eps, steps, step_size, norm)
    if isinstance(model, MultiExit):
        if model.num_exits < 2:
            raise ConfigError(f"model: {type(model).__name__} has a single exit; a slowdown attack needs "
                              "internal exits to defeat")

        def objective(inputs: Tensor) -> Tensor:
            return -uniform_exit_loss(all_exit_logits(model, inputs))
    elif isinstance(model, CalibratableGates):
        def objective(inputs: Tensor) -> Tensor:
            return -execute_all_loss(gate_logits(model, inputs))
    else:
        raise ConfigError(
            f"model: {type(model).__name__} has neither early exits (the MultiExit protocol, e.g. "
            "resnet_exits) nor calibratable skipping gates (e.g. convnet_aig_resnet); a slowdown attack "
            "has nothing to defeat"
        )
    with evaluating(model):
        return projected_gradient_ascent(objective, x, eps=eps, steps=steps, step_size=step,
                                         space=space or InputSpace(), start=step, generator=generator)
