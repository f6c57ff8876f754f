"""Shipped weights measured against their static anchor, for the card of a model with one cost.

A dynamic-parameter network (CondConv, DY-Conv, DY-ReLU, ...) runs the same computation
on every sample: it has no accuracy-FLOPs curve, only a price. What the card needs is that
price against the static network it extends, trained with the same schedule: both scored
on the evaluation half of the validation split (`split_for_calibration`, the half the
other zoo measurements score on), both FLOPs as each reports them, and the time of the
anchor over the model's, measured in the same run at batch 1 and at batch 256 (below 1:
the dynamic parameters cost time).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .early_exit import split_for_calibration
from .zoo_timing import TIMED_BATCH_SIZES, mean_flops, score, speedups, threads_text, timed_inputs


def measure_anchor_comparison(model: nn.Module, validation: Dataset, *, seed: int = 0, threads: int | None = 1, min_run_time: float = 0.3,
                              anchor: nn.Module | None = None, anchor_name: str | None = None,
                              memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, Any] | None:
    """Accuracy, FLOPs and measured time of `model` beside its static anchor.

    Args:
        model: a trained model in eval mode whose forward returns a `DynamicOutput`.
        validation: the validation split, prepared as the model was trained.
        seed: seeds the two halves of `validation` (the second is scored).
        threads: CPU threads for timing.
        min_run_time: seconds of timed calls per callable and round.
        anchor: the static network `model` extends, trained with the same schedule;
            `None`: nothing is measured.
        anchor_name: how the card names the anchor (e.g. its run folder).
        memory_format: layout of the timed inputs.

    Returns:
        `None` without an anchor; else a dict with `kind` ("anchor"), `protocol` (in
        words), `evaluation_samples`, `model` and `anchor` (each `accuracy` and `flops`,
        the mean reported per-sample FLOPs on the evaluation half; the anchor also its
        `name`), `speedup_flops` (the anchor's FLOPs over the model's) and, for each
        batch size `b` of `TIMED_BATCH_SIZES`, `speedup_measured_b{b}` (the anchor's time
        over the model's) and `speedup_flops_b{b}` (the same FLOPs ratio on exactly the
        timed samples).
    """
    if anchor is None:
        return None
    model.eval()
    anchor.eval()
    _, evaluation = split_for_calibration(validation, seed)
    timed = timed_inputs(evaluation, memory_format)
    scored, reference = score(model, evaluation), score(anchor, evaluation)
    found: dict[str, Any] = {
        "kind": "anchor",
        "protocol": (f"The model and the static anchor `{anchor_name or 'given'}` scored on one seeded half of the "
                     "validation split (the half the exit and gate measurements score on), FLOPs as each reports "
                     "them; speedups are the anchor's time over the model's (below 1: the model is slower), timed "
                     f"in the same run with {threads_text(threads)}, on {len(timed[1])} samples one at a time "
                     f"(batch 1) and on one batch of {timed[256][0].shape[0]}"),
        "evaluation_samples": len(evaluation),
        "model": {"accuracy": scored["accuracy"], "flops": scored["mean_flops"]},
        "anchor": {"name": anchor_name, "accuracy": reference["accuracy"], "flops": reference["mean_flops"]},
        "speedup_flops": reference["mean_flops"] / scored["mean_flops"],
    }
    for size in TIMED_BATCH_SIZES:
        batches = timed[size]
        found[f"speedup_measured_b{size}"] = speedups(anchor, {"model": model}, batches, threads=threads,
                                                      min_run_time=min_run_time)["model"]
        found[f"speedup_flops_b{size}"] = mean_flops(anchor, batches) / mean_flops(model, batches)
    return found
