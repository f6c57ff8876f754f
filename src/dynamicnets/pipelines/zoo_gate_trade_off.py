"""The measured accuracy-FLOPs trade-off of shipped layer-skipping weights, for their card.

For a gated ResNet (ConvNet-AIG, SkipNet, BlockDrop): per-block gate thresholds are fitted
on one seeded half of the validation split so that each gated block runs on a fraction
`rate` of it (`calibrate_gate_policy`), for rates from 1.0 down; the model's own trained
rule (logit > 0) is one more point. Each point is scored on the other half by compact
execution (every block runs on the samples whose gate is on) and timed, in the same run,
against a static network of the full size at batch 1 and at batch 256: the separately
trained static anchor when one is given (same architecture as the backbone), else the
model's own backbone with every block run.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import make_eval_loader
from ..errors import ConfigError
from ..gates.thresholds import GatePolicy
from ..inference import calibrate_gate_policy
from ..models.skipping import GatedResNet
from .early_exit import split_for_calibration
from .zoo_timing import TIMED_BATCH_SIZES, Call, mean_flops, score, speedups, threads_text, timed_inputs

LOWEST_RATE = 0.3
"""The smallest per-block execution rate on the curve."""


def gate_rates(points: int, lowest: float = LOWEST_RATE) -> list[float]:
    """`points` per-block execution rates, evenly spaced from 1.0 down to `lowest`.

    Raises:
        ConfigError: fewer than 2 points, or `lowest` outside `(0, 1)`.
    """
    if points < 2:
        raise ConfigError(f"budgets: expected at least 2 points on the curve, got {points}")
    if not 0 < lowest < 1:
        raise ConfigError(f"lowest: expected a rate in (0, 1), got {lowest!r}")
    return [1.0 - (1.0 - lowest) * i / (points - 1) for i in range(points)]


def measure_gate_trade_off(model: nn.Module, validation: Dataset, input_shape: tuple[int, ...], *,
                           budgets: int = 8, seed: int = 0, threads: int | None = 1, min_run_time: float = 0.3,
                           anchor: nn.Module | None = None, anchor_name: str | None = None,
                           memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, Any] | None:
    """The calibrated accuracy-FLOPs curve of a gated ResNet and its measured speedups.

    Args:
        model: a trained gated ResNet in eval mode.
        validation: the validation split, prepared as the model was trained.
        input_shape: one input's shape, e.g. `(3, 32, 32)`.
        budgets: number of calibrated rates (`gate_rates`, at least 2).
        seed: seeds the calibration / evaluation halves.
        threads: CPU threads for timing.
        min_run_time: seconds of timed calls per callable and round.
        anchor: the static anchor (same architecture as `model.backbone`, trained with
            the same schedule) to time against and score on the evaluation half; `None`:
            the model's own backbone.
        anchor_name: how the card names the anchor (e.g. its run folder).
        memory_format: layout of the timed inputs.

    Returns:
        `None` for a model that is not a gated ResNet; else a dict with `kind` ("gates"),
        `protocol` (in words), `calibration_samples`, `evaluation_samples`,
        `gated_blocks`, `static_flops`, `static` (accuracy of the backbone with every
        block run, on the evaluation half), `anchor` (name, accuracy on the evaluation
        half, or `None`), and `curve`: one row per point with `rate` (`None`: the trained
        rule), `thresholds`, `accuracy`, `mean_flops`, `speedup_flops`,
        `executed_fraction`, `budget_flops` (the calibration half's mean FLOPs) and, for
        each batch size `b` of `TIMED_BATCH_SIZES`, `speedup_measured_b{b}` and
        `speedup_flops_b{b}`.

    Raises:
        ConfigError: `budgets` below 2.
    """
    if not isinstance(model, GatedResNet):
        return None
    rates = gate_rates(budgets)
    model.eval()
    static = (anchor if anchor is not None else model.backbone).eval()
    static_flops = float(model.backbone.flops(tuple(input_shape)))
    calibration, evaluation = split_for_calibration(validation, seed)
    timed = timed_inputs(evaluation, memory_format)
    policies: list[tuple[float | None, GatePolicy | None]] = [(None, None)]
    policies += [(rate, calibrate_gate_policy(model, make_eval_loader(calibration, 256), rate)) for rate in rates]
    runs = {f"point{i}": _gated_run(model, policy) for i, (_, policy) in enumerate(policies)}
    measured = {size: speedups(static, runs, timed[size], threads=threads, min_run_time=min_run_time)
                for size in TIMED_BATCH_SIZES}
    curve = []
    for (rate, policy), (name, run) in zip(policies, runs.items()):
        scored = score(run, evaluation, "executed_fraction")
        row = {"rate": rate, "thresholds": None if policy is None else list(policy.thresholds),
               "accuracy": scored["accuracy"], "mean_flops": scored["mean_flops"],
               "speedup_flops": static_flops / scored["mean_flops"],
               "executed_fraction": float(scored["decisions"].double().mean()),
               "budget_flops": score(run, calibration)["mean_flops"]}
        for size in TIMED_BATCH_SIZES:
            row[f"speedup_measured_b{size}"] = measured[size][name]
            row[f"speedup_flops_b{size}"] = static_flops / mean_flops(run, timed[size])
        curve.append(row)
    against = f"the static anchor `{anchor_name or 'given'}`" if anchor is not None else "the backbone run in full"
    return {
        "kind": "gates",
        "protocol": ("Per-block gate thresholds fitted on one seeded half of the validation split so that each "
                     "gated block runs on a fraction `rate` of it (the first row: the trained rule, logit > 0), "
                     "scored on the other half by compact execution; speedups are the time of "
                     f"{against} over the gated network's, timed in the same run with {threads_text(threads)}, on "
                     f"{len(timed[1])} samples one at a time (batch 1) and on one batch of "
                     f"{timed[256][0].shape[0]}"),
        "calibration_samples": len(calibration),
        "evaluation_samples": len(evaluation),
        "gated_blocks": int(model.num_gated_blocks),
        "static_flops": static_flops,
        "static": {"accuracy": score(model.backbone, evaluation)["accuracy"]},
        "anchor": None if anchor is None else {"name": anchor_name, "accuracy": score(anchor, evaluation)["accuracy"]},
        "curve": curve,
    }


def best_point(trade_off: dict[str, Any], reference: float, *, max_drop: float = 0.005,
               min_saving: float = 0.30) -> dict[str, Any] | None:
    """The cheapest curve point within `max_drop` accuracy of `reference` that saves at
    least `min_saving` of the static FLOPs; `None` when no point does."""
    fits = [p for p in trade_off["curve"]
            if p["accuracy"] >= reference - max_drop and p["speedup_flops"] >= 1 / (1 - min_saving)]
    return min(fits, key=lambda p: p["mean_flops"]) if fits else None


def _gated_run(model: GatedResNet, policy: GatePolicy | None) -> Call:
    return lambda x: model(x, policy=policy, execution="compact")
