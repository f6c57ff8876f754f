"""Projected gradient ascent in the L-infinity ball, and PGD on the final logits.

`pgd_attack` is the untargeted attack of Madry et al. ("Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018): a uniform random start in the ball, then
`steps` signed-gradient steps that raise the cross-entropy of the final logits, each
followed by a projection onto the ball and the valid pixel range.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..module_modes import evaluating
from .arguments import check_attack
from .input_space import InputSpace
from .model_outputs import final_logits


def projected_gradient_ascent(
    objective: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    space: InputSpace,
    start: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Raise `objective` by signed-gradient steps on the pixels behind `x`, within `eps`.

    Each step `p <- clamp(p0 + clamp(p + step_size * sign(grad) - p0, -eps, eps), low,
    high)`, in pixel units (`space`), the gradient taken through `space.to_inputs`.

    Args:
        objective: model inputs `(B, *input_shape)` -> scalar to raise (a sum over
            samples, so each sample's gradient is its own).
        x: `(B, *input_shape)` clean model inputs.
        eps, steps, step_size: as checked by `check_attack`.
        space: the pixel space of `x`.
        start: half-width of the uniform random start around the clean pixels (0: none).
        generator: for the random start.

    Returns:
        `(B, *input_shape)` adversarial model inputs (detached), whose pixels differ from
        the clean ones by at most `eps` and lie in `[space.low, space.high]`.
    """
    with torch.inference_mode(False), torch.enable_grad():
        clean = space.to_pixels(x.detach().clone())
        delta = torch.zeros_like(clean)
        if start > 0:
            delta.uniform_(-start, start, generator=generator)
        delta = _project(clean, delta, eps, space)
        for _ in range(steps):
            delta.requires_grad_(True)
            value = objective(space.to_inputs(clean + delta))
            (grad,) = torch.autograd.grad(value, delta)
            delta = _project(clean, delta.detach() + step_size * grad.sign(), eps, space)
        return space.to_inputs(clean + delta).detach()


def _project(clean: Tensor, delta: Tensor, eps: float, space: InputSpace) -> Tensor:
    """`delta` brought into the ball of radius `eps` and the valid pixel range."""
    return space.clamp(clean + delta.clamp(-eps, eps)) - clean


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps,
    steps: int,
    step_size=None,
    norm: str = "linf",
    space: InputSpace | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Untargeted L-infinity PGD on the cross-entropy of the final logits, random start.

    Args:
        model: any classifier returning `DynamicOutput` (a multi-exit model: its last
            exit; a dynamic model: its masked forward). Crafted in eval mode; the model's
            modes are restored afterwards, its parameters get no gradient.
        x: `(B, *input_shape)` model inputs, prepared as in training.
        y: `(B,)` int64 labels.
        eps: radius in pixel units (e.g. `8/255` or `"8/255"`).
        steps: gradient steps (>= 1).
        step_size: pixel change per step; `None`: `2.5 * eps / steps`.
        norm: `"linf"`.
        space: pixel space of `x` (`InputSpace.from_preprocessing`); default pixels in
            [0, 1] fed as they are.
        generator: for the uniform random start in the ball.

    Returns:
        `(B, *input_shape)` adversarial model inputs.

    Raises:
        ConfigError: naming `eps`, `steps`, `step_size` or `norm`.
    """
    eps, steps, step = check_attack(eps, steps, step_size, norm)
    with evaluating(model):
        return projected_gradient_ascent(
            lambda inputs: F.cross_entropy(final_logits(model, inputs), y, reduction="sum"),
            x, eps=eps, steps=steps, step_size=step, space=space or InputSpace(), start=eps, generator=generator,
        )
