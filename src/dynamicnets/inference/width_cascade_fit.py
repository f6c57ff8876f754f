"""Fit a width cascade to a mean-FLOPs budget: which widths to chain, and their thresholds.

A slimmable network's widths can run as a confidence cascade (`WidthCascade`: narrowest
first, a sample goes on to the next width only while its max-probability is below that
exit's threshold). Which chain is best for a budget depends on the network: a narrow first
width is cheap but sends many samples on (each paying for both widths), a wider one decides
more samples itself. `fit_width_cascade` tries every candidate chain on calibration data
(max-probability thresholds fitted to the budget by `calibrate_thresholds`) and keeps the
one with the best calibration accuracy; `collect_width_logits` gathers what it needs, one
pass per width.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
            calibration data (`accuracy` `None`: the budget is below that chain's first width).
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
    widths = list(backbone.widths if widths is None else widths)
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
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
                targets.append(y.reshape(-1).cpu())
    finally:
        backbone.train(was_training)
    if not targets:
        raise ConfigError("collect_width_logits: the loader yielded no batches")
    return {w: torch.cat(chunks) for w, chunks in per_width.items()}, torch.cat(targets)


def default_chains(widths: Sequence[float]) -> list[tuple[float, ...]]:
    """Every two-width chain ending at the widest width, then the chain of all widths."""
    widths = sorted(float(w) for w in widths)
    chains = [(w, widths[-1]) for w in widths[:-1]]
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
            (default: `default_chains`).
        confidence, eval_size: as `calibrate_thresholds` (a mean cost over a fresh batch
            within the budget with that probability).

    Returns:
        `WidthCascadeFit`; ties in accuracy go to the cheaper chain.

    Raises:
        ConfigError: a chain names a width without logits or cost, or the budget is below
            every chain's first width (the message gives the cheapest reachable budget).
    """
    chains = default_chains(list(width_logits)) if chains is None else [tuple(float(w) for w in c) for c in chains]
    best: tuple[tuple[float, ...], BudgetCalibration] | None = None
    tried = []
    for chain in chains:
        missing = [w for w in chain if w not in width_logits or w not in width_costs]
        if missing or not chain or any(b <= a for a, b in zip(chain, chain[1:])):
            raise ConfigError(f"fit_width_cascade: chain {list(chain)} must be increasing widths with logits and "
                              f"costs (given widths: {sorted(width_logits)})")
        costs = torch.tensor([float(width_costs[w]) for w in chain], dtype=torch.float64).cumsum(0).tolist()
        if budget_flops < costs[0]:
            tried.append({"widths": list(chain), "accuracy": None, "mean_flops": None})
            continue
        if len(chain) == 1 or budget_flops >= costs[-1]:
            fitted = calibrate_thresholds([width_logits[w] for w in chain], targets, costs, costs[-1],
                                          criterion="maxprob", confidence=confidence, eval_size=eval_size)
        else:
            fitted = calibrate_thresholds([width_logits[w] for w in chain], targets, costs, budget_flops,
                                          criterion="maxprob", confidence=confidence, eval_size=eval_size)
        tried.append({"widths": list(chain), "accuracy": fitted.accuracy, "mean_flops": fitted.mean_flops})
        if best is None or (fitted.accuracy, -fitted.mean_flops) > (best[1].accuracy, -best[1].mean_flops):
            best = (chain, fitted)
    if best is None:
        cheapest = min(float(width_costs[c[0]]) for c in chains)
        raise ConfigError(f"fit_width_cascade: a budget of {budget_flops:,.0f} FLOPs is below every chain's first "
                          f"width; the cheapest reachable is {cheapest:,.0f}")
    return WidthCascadeFit(widths=best[0], calibration=best[1], candidates=tuple(tried))
