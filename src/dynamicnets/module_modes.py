"""Putting a module in eval mode for one block of work, and each submodule's own mode back after it."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of `model` in eval mode inside the block (batch-norm uses its running
    statistics, nothing is updated, a slimmable network runs one width, not its training
    sandwich), each module's own mode restored after it, also on an error."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
