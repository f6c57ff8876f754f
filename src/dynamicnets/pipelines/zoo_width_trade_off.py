"""The measured accuracy-FLOPs trade-off of shipped width-adaptive weights, for their card.

Slimmable networks (any `WidthLadder` model, e.g. `SlimmableResNet`): one point per
configured width, widest first, each run alone as weight slices of the widest network.
DS-Net (`DSNet`): the gate's trained rule (its argmax width per sample) is the first
point; then the same gate under a `WidthPolicy(max_width=w)` cap for each configured
width below the widest (the gate chooses, the cap narrows the wider choices), run
compactly (samples grouped by width). Every point is scored on the evaluation half of
the validation split (`split_for_calibration`, the half the other zoo measurements
score on; nothing is fitted here) and timed, in one run per batch size, against a
static network at batch 1 and at batch 256: the separately trained static anchor when
one is given, else the network at its widest width.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..inference.width_policy import WidthPolicy
from ..layers.slimmable import WidthLadder
from ..models.width.dsnet import DSNet
from .early_exit import split_for_calibration
from .zoo_timing import Call, score, scored_anchor, threads_text, timed_inputs, timed_speedups


def width_points(model: nn.Module) -> list[tuple[dict[str, Any], Call]] | None:
    """The curve points of a width-adaptive model: `(label, run)` pairs, widest first.

    A slimmable model's label is `{"width": w}`; a DS-Net's `{"max_width": None}` (the
    trained rule) then `{"max_width": w}` per cap. `None` for any other model.
    """
    if isinstance(model, DSNet):
        points: list[tuple[dict[str, Any], Call]] = [({"max_width": None}, lambda x: model(x, "compact"))]
        for w in reversed(model.widths[:-1]):
            cap = WidthPolicy(max_width=w)
            points.append(({"max_width": w}, lambda x, cap=cap: model(x, "compact", policy=cap)))
        return points
    if isinstance(model, WidthLadder):
        return [({"width": w}, lambda x, w=w: model(x, w)) for w in reversed(model.widths)]
    return None


def measure_width_trade_off(model: nn.Module, validation: Dataset, input_shape: tuple[int, ...], *, seed: int = 0,
                            threads: int | None = 1, min_run_time: float = 0.3, anchor: nn.Module | None = None,
                            anchor_name: str | None = None,
                            memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, Any] | None:
    """Accuracy, FLOPs and measured speedups of every width (slimmable) or width cap (DS-Net).

    Args:
        model: a trained slimmable network or DS-Net.
        validation: the validation split, prepared as the model was trained.
        input_shape: one input's shape, e.g. `(3, 32, 32)`.
        seed: seeds the two halves of `validation` (the second is scored).
        threads: CPU threads for timing.
        min_run_time: seconds of timed calls per callable and round.
        anchor: the static anchor (the architecture of the widest width, trained with
            the same schedule) to time against and score on the evaluation half; `None`:
            the model's own widest width.
        anchor_name: how the card names the anchor (e.g. its run folder).
        memory_format: layout of the timed inputs.

    Returns:
        `None` for a model that is neither; else a dict with `kind` ("widths"), `method`
        ("slimmable" or "dsnet"), `protocol` (in words), `evaluation_samples`, `widths`
        (configured, ascending), `static_flops` (the widest width's per-sample FLOPs),
        `gate_flops` (DS-Net's gate, else 0), `static` (the widest width's accuracy on
        the evaluation half), `anchor` (`name`, `accuracy`, `flops`, or `None`) and
        `curve`: one row per point with `width` (slimmable) or `max_width` (DS-Net,
        `None`: the trained rule), `accuracy`, `mean_flops` (per sample, gate
        included), `speedup_flops` (`static_flops / mean_flops`), `width_histogram`
        (samples per configured width, ascending) and, for each batch size `b` of
        `TIMED_BATCH_SIZES`, `speedup_measured_b{b}` (the reference's time over the
        point's) and `speedup_flops_b{b}` (the reference's FLOPs over the point's mean
        FLOPs on exactly the timed samples).
    """
    points = width_points(model)
    if points is None:
        return None
    dsnet = isinstance(model, DSNet)
    ladder = model.backbone if dsnet else model
    model.eval()
    widths = list(ladder.widths)
    static_flops = float(ladder.flops(tuple(input_shape), 1.0))
    _, evaluation = split_for_calibration(validation, seed)
    timed = timed_inputs(evaluation, memory_format)

    def widest(x: torch.Tensor) -> Any:
        return ladder(x, 1.0)

    reference = anchor.eval() if anchor is not None else widest
    curve = []
    for label, run in points:
        scored = score(run, evaluation, "width")
        chosen = scored["decisions"].double()
        curve.append({**label, "accuracy": scored["accuracy"], "mean_flops": scored["mean_flops"],
                      "speedup_flops": static_flops / scored["mean_flops"],
                      "width_histogram": [int(torch.isclose(chosen, torch.tensor(w, dtype=torch.float64)).sum())
                                          for w in widths]})
    timings = timed_speedups(reference, [run for _, run in points], timed, threads=threads,
                             min_run_time=min_run_time)
    for row, timing in zip(curve, timings):
        row.update(timing)
    anchored = scored_anchor(anchor, anchor_name, evaluation)
    return {
        "kind": "widths",
        "method": "dsnet" if dsnet else "slimmable",
        "protocol": _protocol(dsnet, None if anchor is None else anchor_name or "given", threads,
                              len(timed[1]), timed[256][0].shape[0]),
        "evaluation_samples": len(evaluation),
        "widths": widths,
        "static_flops": static_flops,
        "gate_flops": float(model.gate_flops(tuple(input_shape))) if dsnet else 0.0,
        "static": {"accuracy": score(widest, evaluation)["accuracy"]},
        "anchor": anchored,
        "curve": curve,
    }


def _protocol(dsnet: bool, anchor_name: str | None, threads: int | None, singles: int, batch: int) -> str:
    if dsnet:
        what = ("The gate's trained rule (its argmax width per sample; first row), then the same gate under a "
                "`WidthPolicy(max_width=w)` cap for each configured width below the widest (the gate chooses, the "
                "cap narrows wider choices), run compactly (samples grouped by width, each group as weight slices; "
                "mean FLOPs include the gate)")
    else:
        what = "Every configured width run alone, as weight slices of the widest network"
    against = "the widest width" if anchor_name is None else f"the static anchor `{anchor_name}`"
    return (f"{what}, scored on one seeded half of the validation split (the half the exit and gate measurements "
            f"score on; nothing is fitted); speedups are the time of {against} over the point's, timed in the same "
            f"run with {threads_text(threads)}, on {singles} samples one at a time (batch 1) and on one batch of "
            f"{batch}")
