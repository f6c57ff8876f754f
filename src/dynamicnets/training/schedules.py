"""Per-step learning-rate schedules: linear warm-up, then cosine decay or constant."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine") -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based).

    Warm-up rises linearly, `(step + 1) / warmup_steps`, over the first `warmup_steps`
    steps; after it, `cosine` decays as `0.5 * (1 + cos(pi * t))` with `t` going from 0
    at the end of warm-up towards 1 at `total_steps`; `constant` stays at 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; expected 'cosine' or 'constant'")
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine"
) -> LambdaLR:
    """`LambdaLR` stepping once per optimizer step along `lr_factor`.

    The factor is a closure, so the scheduler's `state_dict` holds only its step count:
    a resumed run follows the schedule of its *current* config (e.g. more epochs).
    """

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, schedule)

    return LambdaLR(optimizer, factor)
