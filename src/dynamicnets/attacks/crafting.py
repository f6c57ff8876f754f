"""One entry point for every attack kind, batch by batch (the CLI, the benchmark and
adversarial training use it)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .input_space import InputSpace
from .pgd import pgd_attack
from .slowdown import slowdown_attack

KINDS = ("pgd", "slowdown")
"""`pgd`: untargeted PGD on the final logits' cross-entropy; `slowdown`: DeepSloth."""


def check_kind(kind: str, what: str = "kind") -> str:
    """`kind` after checking it is one of `KINDS` (a `ConfigError` naming `what` else)."""
    if kind not in KINDS:
        raise ConfigError(f"{what}: expected one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def craft(
    kind: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps,
    steps: int,
    step_size=None,
    space: InputSpace | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Adversarial inputs of `kind` for `x`, crafted `batch_size` samples at a time.

    Args:
        kind: one of `KINDS`.
        model, eps, steps, step_size, space, generator: as for `pgd_attack` /
            `slowdown_attack` (`y`, `(N,)` labels, is used by `pgd` only).
        x: `(N, *input_shape)` model inputs.
        batch_size: samples per attack call; `None`: all at once.

    Returns:
        `(N, *input_shape)` adversarial model inputs.
    """
    check_kind(kind)
    size = x.shape[0] if batch_size is None else int(batch_size)
    if size < 1:
        raise ConfigError(f"batch_size: expected an integer >= 1, got {batch_size}")
    pieces = []
    for start in range(0, x.shape[0], size):
        xb, yb = x[start:start + size], y[start:start + size]
        common = {"eps": eps, "steps": steps, "step_size": step_size, "space": space, "generator": generator}
        if kind == "pgd":
            pieces.append(pgd_attack(model, xb, yb, **common))
        else:
            pieces.append(slowdown_attack(model, xb, **common))
    return torch.cat(pieces)
