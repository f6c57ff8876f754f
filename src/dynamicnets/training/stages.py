"""Staged training: train some of a model's sub-modules while the rest stay frozen.

GFNet (Wang et al., "Glance and Focus", NeurIPS 2020) trains in stages: first the
encoders, recurrent cell and classifier with random patch locations, then the patch
policy alone with the readers frozen, then (optionally) the readers again with the learned
policy fixed. `train_only` sets one such stage up; `split_steps` divides a step budget
among stages.

Example:
    >>> params = train_only(model, ("policy", "where"))   # stage 2 of GFNet
    >>> optimizer = torch.optim.AdamW(params, lr=1e-3)
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import ConfigError


def train_only(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    """Make the named direct sub-modules of `model` the only trainable part.

    Every parameter outside them gets `requires_grad=False`; `model` is put in training
    mode, and each *other* direct child in eval mode, so that frozen batch-norm layers keep
    their running statistics (and dropout is off) while the trained part runs as in
    training. Call again to change stage; call `model.eval()` / `model.requires_grad_()`
    to undo.

    Args:
        model: the model.
        names: names of direct children of `model` (as `named_children` gives them).

    Returns:
        The trainable parameters (those of the named children), for an optimizer.

    Raises:
        ConfigError: naming `names` when one is not a child of `model`, or none has
            parameters.
    """
    children = dict(model.named_children())
    wanted = list(names) if not isinstance(names, str) else [names]
    unknown = [n for n in wanted if n not in children]
    if not wanted or unknown:
        raise ConfigError(f"train_only: names must be direct sub-modules of the model ({sorted(children)}), "
                          f"got {list(names)!r}" + (f" (unknown: {unknown})" if unknown else ""))
    model.requires_grad_(False)
    model.train()
    params: list[nn.Parameter] = []
    for name, child in children.items():
        if name in wanted:
            child.requires_grad_(True)
            params.extend(child.parameters())
        else:
            child.eval()
    if not params:
        raise ConfigError(f"train_only: names {wanted!r} hold no parameters")
    return params


def split_steps(total: int, fractions: Sequence[float]) -> list[int]:
    """`total` steps divided among stages in proportion to `fractions` (rounded, summing
    to `total`; the last stage takes the rounding).

    Args:
        total: steps in all, `>= 0`.
        fractions: one weight `>= 0` per stage, positive sum.

    Returns:
        One step count per stage.

    Raises:
        ConfigError: naming `total` or `fractions`.
    """
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise ConfigError(f"split_steps: total must be an int >= 0, got {total!r}")
    values = list(fractions)
    if not values or any(not isinstance(f, (int, float)) or f < 0 for f in values) or sum(values) <= 0:
        raise ConfigError(f"split_steps: fractions must be numbers >= 0 with a positive sum, got {fractions!r}")
    scale = total / float(sum(values))
    counts = [int(round(f * scale)) for f in values[:-1]]
    counts = [min(c, total - sum(counts[:i])) for i, c in enumerate(counts)]
    return counts + [total - sum(counts)]
