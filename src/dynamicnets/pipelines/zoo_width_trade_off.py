"""The measured accuracy-FLOPs trade-off of shipped width-adaptive weights, for their card.

Slimmable networks (any `WidthLadder` model, e.g. `SlimmableResNet`): one point per
configured width, widest first, each run alone as weight slices of the widest network;
then, for each of `BUDGET_RATIOS` of the widest width's FLOPs, the widths run as a
confidence cascade (`WidthCascade`), its chain of widths and max-probability thresholds
fitted to that budget on the calibration half (`fit_width_cascade`) and run by the compact
early-exit executor (each width on just the samples that reached it).
DS-Net (`DSNet`): the gate's trained rule (its argmax width per sample) is the first
point; then the gate with a bias fitted to a mean-FLOPs budget on the calibration half
(`calibrate_width_policy`) for each of `BUDGET_RATIOS` of the widest width's FLOPs;
then the gate under a `WidthPolicy(max_width=w)` cap for each configured width below
the widest (the gate chooses, the cap narrows the wider choices); all run compactly
(samples grouped by width). Every point is scored on the evaluation half of the
validation split (`split_for_calibration`, the half the other zoo measurements score
on) and timed, in one run per batch size, against a static network at batch 1 and at
batch 256: the separately trained static anchor when one is given, else the network at
its widest width.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import make_eval_loader
from ..inference.policy import ExitPolicy
from ..inference.width_calibration import calibrate_width_policy
from ..inference.width_cascade_fit import collect_width_logits, fit_width_cascade
from ..inference.width_policy import WidthPolicy
from ..layers.slimmable import WidthLadder, build_slice_cache
from ..models.width.dsnet import DSNet
from ..models.width.width_cascade import WidthCascade
from .early_exit import split_for_calibration
from .policy_budget import samples_per_width
from .zoo_timing import Call, score, scored_anchor, threads_text, timed_inputs, timed_speedups


BUDGET_RATIOS = (0.85, 0.7, 0.6, 0.5, 0.35)


def width_points(model: nn.Module, calibration: Dataset | None = None,
                 input_shape: tuple[int, ...] | None = None) -> list[tuple[dict[str, Any], Call]] | None:
    """The curve points of a width-adaptive model: `(label, run)` pairs, widest first.

    A slimmable model's label is `{"width": w}`, then with `calibration` data and
    `input_shape` one `{"cascade": widths, "budget_ratio": r, "thresholds": [...]}` point
    per reachable ratio of `BUDGET_RATIOS` (`cascade_points`); a DS-Net's `{"max_width": None,
    "budget_ratio": None}` (the trained rule), then with `calibration` data and
    `input_shape` one `{"budget_ratio": r, "policy": ...}` point per reachable ratio of
    `BUDGET_RATIOS` (the gate's bias fitted to `r` times the widest width's FLOPs; `policy`
    the fitted `WidthPolicy.to_dict()`, its `meta` the calibration's), then
    `{"max_width": w}` per cap.
    `None` for any other model.
    """
    if isinstance(model, DSNet):
        points: list[tuple[dict[str, Any], Call]] = [
            ({"max_width": None, "budget_ratio": None}, lambda x: model(x, "compact"))]
        if calibration is not None and input_shape is not None:
            shape = tuple(input_shape)
            widest = float(model.backbone.flops(shape, 1.0))
            narrowest = float(model.width_costs(shape)[0]) + model.gate_flops(shape)
            batches = [x for x, _ in DataLoader(calibration, batch_size=256)]
            for ratio in (r for r in BUDGET_RATIOS if r * widest >= narrowest):
                fitted = calibrate_width_policy(model, batches, ratio * widest)
                points.append(({"max_width": None, "budget_ratio": ratio, "policy": fitted.to_dict()},
                               lambda x, p=fitted: model(x, "compact", policy=p)))
        for w in reversed(model.widths[:-1]):
            cap = WidthPolicy(max_width=w)
            points.append(({"max_width": w, "budget_ratio": None},
                           lambda x, cap=cap: model(x, "compact", policy=cap)))
        return points
    if isinstance(model, WidthLadder):
        points = [({"width": w}, lambda x, w=w: model(x, w)) for w in reversed(model.widths)]
        if calibration is not None and input_shape is not None and len(model.widths) > 1:
            points += cascade_points(model, calibration, tuple(input_shape))
        return points
    return None


def cascade_points(model: nn.Module, calibration: Dataset,
                   input_shape: tuple[int, ...]) -> list[tuple[dict[str, Any], Call]]:
    """A slimmable network's widths run as a confidence cascade, one point per reachable
    ratio of `BUDGET_RATIOS` of the widest width's FLOPs: the chain and its thresholds
    fitted on `calibration` (`fit_width_cascade`), run by the compact executor. Labels:
    `{"cascade": [widths], "budget_ratio": r, "thresholds": [...]}`."""
    logits, targets = collect_width_logits(model, make_eval_loader(calibration, 256))
    costs = {w: float(model.flops(input_shape, w)) for w in model.widths}
    points: list[tuple[dict[str, Any], Call]] = []
    for ratio in (r for r in BUDGET_RATIOS if r * costs[1.0] >= min(costs.values())):
        fitted = fit_width_cascade(logits, targets, costs, ratio * costs[1.0])
        cascade = WidthCascade(model, fitted.widths).eval()
        policy = ExitPolicy("maxprob", fitted.calibration.policy.thresholds)
        label = {"cascade": list(fitted.widths), "budget_ratio": ratio, "thresholds": list(policy.thresholds)}
        points.append((label, lambda x, c=cascade, p=policy: c(x, p)))
    return points


def measure_width_trade_off(model: nn.Module, validation: Dataset, input_shape: tuple[int, ...], *, seed: int = 0,
                            threads: int | None = 1, min_run_time: float = 0.3, anchor: nn.Module | None = None,
                            anchor_name: str | None = None,
                            memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, Any] | None:
    """Accuracy, FLOPs and measured speedups of every width (slimmable) or width cap (DS-Net).

    Args:
        model: a trained slimmable network or DS-Net.
        validation: the validation split, prepared as the model was trained.
        input_shape: one input's shape, e.g. `(3, 32, 32)`.
        seed: seeds the two halves of `validation` (the first fits DS-Net's budget
            biases, the second is scored).
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
        `curve`: one row per point with `width` (slimmable) or `max_width` and
        `budget_ratio` (DS-Net; both `None`: the trained rule), `accuracy`, `mean_flops` (per sample, gate
        included), `speedup_flops` (`static_flops / mean_flops`), `width_histogram`
        (samples per configured width, ascending; for a cascade, the width each sample
        ended at) and, for each batch size `b` of
        `TIMED_BATCH_SIZES`, `speedup_measured_b{b}` (the reference's time over the
        point's) and `speedup_flops_b{b}` (the reference's FLOPs over the point's mean
        FLOPs on exactly the timed samples).
    """
    calibration, evaluation = split_for_calibration(validation, seed)
    model.eval()
    points = width_points(model, calibration, input_shape)
    if points is None:
        return None
    dsnet = isinstance(model, DSNet)
    ladder = model.backbone if dsnet else model
    widths = list(ladder.widths)
    build_slice_cache(ladder, widths)  # the inference deployment: contiguous slices, no per-call copy
    static_flops = float(ladder.flops(tuple(input_shape), 1.0))
    timed = timed_inputs(evaluation, memory_format)

    def widest(x: torch.Tensor) -> Any:
        return ladder(x, 1.0)

    reference = anchor.eval() if anchor is not None else widest
    curve = []
    for label, run in points:
        scored = score(run, evaluation, "width")
        curve.append({**label, "accuracy": scored["accuracy"], "mean_flops": scored["mean_flops"],
                      "speedup_flops": static_flops / scored["mean_flops"],
                      "width_histogram": samples_per_width(scored["decisions"], widths)})
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
        what = ("The gate's trained rule (its argmax width per sample; first row), then the gate with a "
                "cost-proportional bias on its scores fitted on the other half of the validation split to "
                f"{', '.join(f'{r:g}' for r in BUDGET_RATIOS)} of the widest width's FLOPs "
                "(`calibrate_width_policy`), then the gate under a `WidthPolicy(max_width=w)` cap for each "
                "configured width below the widest (the gate chooses, the cap narrows wider choices), all run "
                "compactly (samples grouped by width, each group as weight slices cached as contiguous copies by "
                "`build_slice_cache`; mean FLOPs include the gate)")
    else:
        what = ("Every configured width run alone, as weight slices of the widest network cached as contiguous "
                "copies by `build_slice_cache`; then the widths as a confidence cascade (`WidthCascade`: a sample "
                "goes on to the next width, from the input, while its max-probability is below that width's "
                "threshold, paying for every width it ran), the chain of widths and its thresholds fitted on the "
                "other half of the validation split to "
                f"{', '.join(f'{r:g}' for r in BUDGET_RATIOS)} of the widest width's FLOPs (`fit_width_cascade`: "
                "the chain with the best accuracy on that half) and run by the compact early-exit executor")
    against = "the widest width" if anchor_name is None else f"the static anchor `{anchor_name}`"
    return (f"{what}, scored on one seeded half of the validation split (the half the exit and gate measurements "
            f"score on); speedups are the time of {against} over the point's, timed in the same "
            f"run with {threads_text(threads)}, on {singles} samples one at a time (batch 1) and on one batch of "
            f"{batch}")
