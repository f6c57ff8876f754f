"""Fit a width cascade to a mean-FLOPs budget: which widths to chain, and their thresholds.

A slimmable network's widths can run as a confidence cascade (`WidthCascade`: narrowest
first, a sample goes on to the next width only while its max-probability is below that
exit's threshold). Which chain is best for a budget depends on the network: a narrow first
width is cheap but sends many samples on (each paying for both widths), a wider one decides
more samples itself, and a generous budget may be best spent on one width alone.
`fit_width_cascade` tries every candidate chain on calibration data
(max-probability thresholds fitted to the budget by `calibrate_thresholds`) and keeps the
one with the best calibration accuracy; `collect_width_logits` gathers what it needs, one
pass per width.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..devices import module_device
from ..errors import ConfigError
from .calibrate import BudgetCalibration, calibrate_thresholds


@dataclass(frozen=True)
class WidthCascadeFit:
    """The chain of widths chosen for a budget and its fitted thresholds.

    Attributes:
        widths: the chain, ascending (build it with `WidthCascade(backbone, widths)`).
        calibration: the thresholds (`calibration.policy`, an `ExitPolicy`) and what they
            achieve on the calibration data (mean FLOPs, accuracy, exit fractions).
        candidates: every chain tried, `{"widths", "accuracy", "mean_flops"}` on the
            calibration data (`accuracy` `None`: the budget is below that chain's first
            width, or, with `"cut_by_cap": True`, the per-sample cap is).
    """

    widths: tuple[float, ...]
    calibration: BudgetCalibration
    candidates: tuple[dict, ...]


def collect_width_logits(
    backbone: nn.Module, loader: Iterable, widths: Sequence[float] | None = None
) -> tuple[dict[float, Tensor], Tensor]:
    """Logits of every width on every sample (eval mode, no grad).

    Args:
        backbone: a slimmable network with `forward_logits(x, width)` and `widths`.
        loader: yields `(x, y)` batches, `x (B, *input_shape)`, `y (B,)` int64.
        widths: the widths to run (default: the backbone's configured widths).

    Returns:
        `({width: (N, C) float32 CPU logits}, (N,) int64 targets)`.
    """
    widths = [backbone.check_width(float(w)) for w in (backbone.widths if widths is None else widths)]
    device = module_device(backbone)
    was_training = backbone.training
    backbone.eval()
    per_width: dict[float, list[Tensor]] = {float(w): [] for w in widths}
    targets = []
    try:
        with torch.no_grad():
            for x, y in loader:
                x = x.to(device)
                for w in per_width:
                    per_width[w].append(backbone.forward_logits(x, w).float().cpu())
                targets.append(y.reshape(-1).long().cpu())
    finally:
        backbone.train(was_training)
    if not targets:
        raise ConfigError("collect_width_logits: the loader yielded no batches")
    return {w: torch.cat(chunks) for w, chunks in per_width.items()}, torch.cat(targets)


def default_chains(widths: Sequence[float]) -> list[tuple[float, ...]]:
    """Every width alone, every two-width chain ending at the widest width, then the chain
    of all widths (when there are more than two)."""
    widths = sorted(float(w) for w in widths)
    chains = [(w,) for w in widths] + [(w, widths[-1]) for w in widths[:-1]]
    if len(widths) > 2:
        chains.append(tuple(widths))
    return chains


def fit_width_cascade(
    width_logits: Mapping[float, Tensor],
    targets: Tensor,
    width_costs: Mapping[float, float],
    budget_flops: float,
    *,
    chains: Sequence[Sequence[float]] | None = None,
    max_flops: float | None = None,
    confidence: float | None = None,
    eval_size: int | None = None,
) -> WidthCascadeFit:
    """The chain of widths, and its max-probability thresholds, with the best accuracy on
    the calibration data within a mean-FLOPs budget.

    Args:
        width_logits: `{width: (N, C)}` calibration logits (`collect_width_logits`).
        targets: `(N,)` int64 labels.
        width_costs: `{width: per-sample FLOPs}` of one width run alone (the backbone's
            `flops(input_shape, width)`); a chain's exit costs are their running sums.
        budget_flops: mean FLOPs per sample allowed.
        chains: the chains to try, each ascending with widths of `width_logits`
            (default: `default_chains`; a one-width chain is that width run alone).
        max_flops: a per-sample cap: each chain is cut back to the widths whose running
            cost fits it (the chain then ends there, as the executor under
            `ExitPolicy(max_flops=...)` ends it).
        confidence, eval_size: as `calibrate_thresholds` (a mean cost over a fresh batch
            within the budget with that probability).

    Returns:
        `WidthCascadeFit`; ties in accuracy go to the cheaper chain.

    Raises:
        ConfigError: no chains, a chain that is not increasing or names a width without
            logits or cost, or a budget (or cap) below every chain's first width (the
            message gives the cheapest reachable).
    """
    chains = default_chains(list(width_logits)) if chains is None else [tuple(float(w) for w in c) for c in chains]
    if not chains:
        raise ConfigError("fit_width_cascade: no chains of widths to try")
    best: tuple[tuple[float, ...], BudgetCalibration] | None = None
    tried, seen = [], set()
    for chain in chains:
        missing = [w for w in chain if w not in width_logits or w not in width_costs]
        if missing or not chain or any(b <= a for a, b in zip(chain, chain[1:])):
            raise ConfigError(f"fit_width_cascade: chain {list(chain)} must be increasing widths with logits and "
                              f"costs; {missing or 'none'} missing (given widths: {sorted(width_logits)})")
        costs = torch.tensor([float(width_costs[w]) for w in chain], dtype=torch.float64).cumsum(0).tolist()
        if max_flops is not None:
            affordable = sum(c <= max_flops for c in costs)
            if affordable == 0:
                tried.append({"widths": list(chain), "accuracy": None, "mean_flops": None, "cut_by_cap": True})
                continue
            chain, costs = chain[:affordable], costs[:affordable]
        if chain in seen:
            continue
        seen.add(chain)
        if budget_flops < costs[0]:
            tried.append({"widths": list(chain), "accuracy": None, "mean_flops": None})
            continue
        fitted = calibrate_thresholds([width_logits[w] for w in chain], targets, costs, min(budget_flops, costs[-1]),
                                      criterion="maxprob", confidence=confidence, eval_size=eval_size)
        tried.append({"widths": list(chain), "accuracy": fitted.accuracy, "mean_flops": fitted.mean_flops})
        if best is None or (fitted.accuracy, -fitted.mean_flops) > (best[1].accuracy, -best[1].mean_flops):
            best = (chain, fitted)
    if best is None:
        cheapest = min(float(width_costs[c[0]]) for c in chains)
        if max_flops is not None and max_flops < cheapest <= budget_flops:
            raise ConfigError(f"fit_width_cascade: the per-sample cap of {_number(max_flops)} FLOPs is below every "
                              f"chain's first width; the cheapest is {_number(cheapest)}")
        capped = "" if max_flops is None else f" (per-sample cap {_number(max_flops)})"
        raise ConfigError(f"fit_width_cascade: a budget of {_number(budget_flops)} FLOPs{capped} is below every "
                          f"chain's first width; the cheapest reachable is {_number(cheapest)}")
    return WidthCascadeFit(widths=best[0], calibration=best[1], candidates=tuple(tried))


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:g}"
