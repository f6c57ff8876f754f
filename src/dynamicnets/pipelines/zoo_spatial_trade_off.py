"""The measured accuracy-FLOPs trade-off of shipped spatially gated weights, for their card.

For a spatially gated ResNet (DynConv: a per-position gate in front of every
identity-shortcut block; any model with `gated_block_inputs`, `strategies` and a
`decisions["density"]`): the model's own trained rule (logit > 0) is the first point;
then the same gates under a `GatePolicy(max_density=c)` compute cap for each `c` of
`DENSITY_CAPS` (a sample whose gates switch on more than a fraction `c` of a block's
positions keeps its highest-scoring ones, `gates.spatial.cap_density`). Nothing is
fitted: every point is scored on the evaluation half of the validation split
(`split_for_calibration`, the half the other zoo measurements score on) with the model's
own compact strategy.

Timing, at batch 1 (`BATCH1_SAMPLES` single samples) and at batch 256: for each point,
`inference.fastest_block_strategies` picks the fastest exact execution of every gated
block (dense, gathered positions, gathered tiles) on a calibration batch of that size
taken from the other half, and the point runs with that choice; all points are timed in
one run against a static network: the separately trained static anchor when one is
given, else the model itself with every position run densely. Inputs and weights are
channels-last (what sparse gathering is built for). The FLOPs speedup of a timed point
is the reference's FLOPs over the point's on exactly the timed samples *with the chosen
strategies* (a block run dense computes its whole map).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..gates.thresholds import GatePolicy
from ..inference import fastest_block_strategies
from ..training.evaluate import to_channels_last
from .early_exit import split_for_calibration, timed_batches
from .zoo_timing import (
    TIMED_BATCH_SIZES, Call, decreasing_fractions, mean_flops, score, scored_anchor, speedups, threads_text,
    timed_inputs,
)

DENSITY_CAPS = (0.75, 0.5, 0.3)
"""The `max_density` caps on the curve, after the trained rule."""


@runtime_checkable
class SpatiallyGated(Protocol):
    """A network whose gated blocks run only at the positions their gates switch on:
    `gated_block_inputs(x, policy)` gives each gated block's input and mask,
    `strategies` its compact execution per gated block, `cost_breakdown(input_shape)` the
    per-sample FLOPs of its dense parts (`{"stem", "stages": [[per block]], "head"}`), and
    its forward takes `policy=` (a `GatePolicy`) and `strategy=` and reports
    `decisions["density"]` `(B,)`."""

    num_gated_blocks: int
    strategies: list

    def gated_block_inputs(self, x: Tensor, policy: GatePolicy | None = None) -> list[tuple[Tensor, Tensor]]: ...

    def cost_breakdown(self, input_shape: tuple[int, ...]) -> dict: ...


def density_caps(caps: Sequence[float]) -> list[float]:
    """`caps` checked: numbers in `(0, 1)`, strictly decreasing.

    Raises:
        ConfigError: naming `caps` and what was expected.
    """
    return decreasing_fractions(caps, "caps", "max_density caps")


def dense_flops(model: SpatiallyGated, input_shape: tuple[int, ...]) -> float:
    """Per-sample FLOPs of `model`'s network with every block run on its whole map and no
    gates: what the same architecture costs as a static network."""
    parts = model.cost_breakdown(tuple(input_shape))
    return float(parts["stem"] + sum(sum(stage) for stage in parts["stages"]) + parts["head"])


def measure_spatial_trade_off(model: nn.Module, validation: Dataset, input_shape: tuple[int, ...], *, seed: int = 0,
                              threads: int | None = 1, min_run_time: float = 0.3, anchor: nn.Module | None = None,
                              anchor_name: str | None = None, caps: Sequence[float] = DENSITY_CAPS,
                              strategy_min_run_time: float | None = None) -> dict[str, Any] | None:
    """Accuracy, FLOPs, density and measured speedups of a spatially gated model's trained
    rule and of `max_density` caps on it.

    Args:
        model: a trained spatially gated model (`SpatiallyGated`); it is not changed
            (a channels-last copy is measured).
        validation: the validation split, prepared as the model was trained.
        input_shape: one input's shape, e.g. `(3, 32, 32)`.
        seed: seeds the two halves of `validation` (the first picks the strategies, the
            second is scored and timed).
        threads: CPU threads for timing (and for choosing the strategies).
        min_run_time: seconds of timed calls per callable and round.
        anchor: the static anchor (the architecture the gates are added to, trained with
            the same schedule) to time against and score on the evaluation half; `None`:
            the model with every position run densely.
        anchor_name: how the card names the anchor (e.g. its run folder).
        caps: `max_density` caps after the trained rule, decreasing, in `(0, 1)`.
        strategy_min_run_time: seconds per measurement when choosing the strategies
            (`fastest_block_strategies`); default `min_run_time / 3`.

    Returns:
        `None` for a model that is not spatially gated; else a dict with `kind`
        ("spatial"), `protocol` (in words), `calibration_samples` (the half the
        strategies were chosen on), `evaluation_samples`, `gated_blocks`, `static_flops`
        (the architecture's dense per-sample FLOPs, `dense_flops`), `static` (the model
        with every position run: `accuracy`, `flops` as it reports them, gates included),
        `anchor` (`name`, `accuracy`, `flops`, or `None`), `reference` (what the timings
        are against, in words) and `curve`: one row per point with `max_density`
        (`None`: the trained rule), `accuracy`, `mean_flops` (mean `out.flops`, the
        model's own strategy), `density` (mean `decisions["density"]`: the executed
        fraction of the gated blocks' dense FLOPs), `speedup_flops` (`static_flops /
        mean_flops`) and, for each batch size `b` of `TIMED_BATCH_SIZES`,
        `strategies_b{b}` (the chosen strategy per gated block), `speedup_measured_b{b}`
        (the reference's time over the point's) and `speedup_flops_b{b}` (the
        reference's FLOPs over the point's, on exactly the timed samples, with those
        strategies).

    Raises:
        ConfigError: bad `caps`, or a validation split too small to give a calibration
            batch.
    """
    if not isinstance(model, SpatiallyGated):
        return None
    caps = density_caps(caps)
    if strategy_min_run_time is None:
        strategy_min_run_time = min_run_time / 3
    model = to_channels_last(copy.deepcopy(model).eval())
    anchor = None if anchor is None else to_channels_last(copy.deepcopy(anchor).eval())
    blocks = int(model.num_gated_blocks)
    static_flops = dense_flops(model, input_shape)
    calibration, evaluation = split_for_calibration(validation, seed)
    if len(calibration) == 0:
        raise ConfigError("validation: expected at least 2 samples to choose execution strategies on one half")
    timed = timed_inputs(evaluation, torch.channels_last)
    everything = GatePolicy.constant(float("-inf"), blocks)

    def dense(x: Tensor) -> Any:
        return model(x, policy=everything, strategy="dense")

    policies: list[tuple[float | None, GatePolicy | None]] = [(None, None)]
    policies += [(cap, GatePolicy.constant(0.0, blocks, max_density=cap)) for cap in caps]
    curve = []
    for cap, policy in policies:
        scored = score(lambda x, p=policy: model(x, policy=p), evaluation, "density")
        curve.append({"max_density": cap, "accuracy": scored["accuracy"], "mean_flops": scored["mean_flops"],
                      "density": float(scored["decisions"].double().mean()),
                      "speedup_flops": static_flops / scored["mean_flops"]})
    reference = anchor if anchor is not None else dense
    for size in TIMED_BATCH_SIZES:
        batches = timed[size]
        calib = timed_batches(calibration, size, size)[0].contiguous(memory_format=torch.channels_last)
        runs: dict[str, Call] = {}
        for i, (row, (_, policy)) in enumerate(zip(curve, policies)):
            chosen = _fastest(model, calib, policy, threads, strategy_min_run_time)
            row[f"strategies_b{size}"] = chosen
            runs[str(i)] = lambda x, p=policy, s=chosen: model(x, policy=p, strategy=s)
        reference_flops = mean_flops(reference, batches)
        measured = speedups(reference, runs, batches, threads=threads, min_run_time=min_run_time)
        for i, row in enumerate(curve):
            row[f"speedup_measured_b{size}"] = measured[str(i)]
            row[f"speedup_flops_b{size}"] = reference_flops / mean_flops(runs[str(i)], batches)
    static = score(dense, evaluation)
    anchored = scored_anchor(anchor, anchor_name, evaluation)
    against = (f"the static anchor `{anchor_name or 'given'}`" if anchor is not None
               else "the model with every position run densely")
    return {
        "kind": "spatial",
        "protocol": _protocol(caps, against, threads, len(timed[1]), timed[256][0].shape[0]),
        "calibration_samples": len(calibration),
        "evaluation_samples": len(evaluation),
        "gated_blocks": blocks,
        "static_flops": static_flops,
        "static": {"accuracy": static["accuracy"], "flops": static["mean_flops"]},
        "anchor": anchored,
        "reference": against,
        "curve": curve,
    }


def _fastest(model: nn.Module, calib: Tensor, policy: GatePolicy | None, threads: int | None,
             min_run_time: float) -> list[str]:
    """`fastest_block_strategies` on `calib` under `policy`, with `threads` threads."""
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        chosen, _ = fastest_block_strategies(model, calib, policy=policy, min_run_time=min_run_time)
    finally:
        torch.set_num_threads(before)
    return list(chosen)


def _protocol(caps: list[float], against: str, threads: int | None, singles: int, batch: int) -> str:
    shown = ", ".join(f"{c:g}" for c in caps)
    return ("The gates' trained rule (logit > 0; first row), then the same gates under a `GatePolicy(max_density=c)` "
            f"cap for c = {shown} (a sample keeps at most that fraction of each gated block's positions, its "
            "highest-scoring ones), scored on one seeded half of the validation split (the half the exit and gate "
            "measurements score on; nothing is fitted) by compact execution; for timing, each point's execution "
            "per gated block (dense, gathered positions or tiles) is the fastest on a calibration batch of the "
            f"timed size from the other half (`fastest_block_strategies`), and speedups are the time of {against} "
            f"over the point's, timed in the same run with {threads_text(threads)}, channels-last, on {singles} "
            f"samples one at a time (batch 1) and on one batch of {batch}")
