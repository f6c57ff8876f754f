"""`fit_width_cascade`: the chain of widths and thresholds with the best calibration accuracy in a budget."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.inference import fit_width_cascade
from dynamicnets.inference.width_cascade_fit import default_chains

COSTS = {0.25: 1.0, 0.5: 4.0, 1.0: 16.0}


def _logits(correct: torch.Tensor, confident: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Two-class logits: right or wrong per `correct`, sharp where `confident`, flat elsewhere."""
    margin = torch.where(confident, 6.0, 0.1)
    predicted = torch.where(correct, targets, 1 - targets)
    logits = torch.zeros(len(targets), 2)
    logits[torch.arange(len(targets)), predicted] = margin
    return logits


def _data():
    n = 200
    targets = torch.arange(n) % 2
    idx = torch.arange(n)
    # width 0.25 is right and sure on the first 40 samples, unsure elsewhere (and right on half of those)
    w25 = _logits((idx < 40) | (idx % 2 == 0), idx < 40, targets)
    # width 0.5 is right and sure on the first 120, unsure and wrong elsewhere
    w50 = _logits(idx < 120, idx < 120, targets)
    w100 = _logits(torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool), targets)
    return {0.25: w25, 0.5: w50, 1.0: w100}, targets


def test_the_chain_with_the_best_calibration_accuracy_within_the_budget_is_chosen():
    logits, targets = _data()
    # 0.5 -> 1.0 can let the 120 sure samples exit: 4 + 0.4 * 16 = 10.4 per sample, every answer right;
    # 0.25 -> 1.0 within 10.4 lets about 0.4 of the samples through to the widest: many wrong answers stay
    fit = fit_width_cascade(logits, targets, COSTS, 10.5)
    assert fit.widths == (0.5, 1.0)
    assert fit.calibration.accuracy == 1.0 and fit.calibration.mean_flops <= 10.5
    assert {tuple(c["widths"]) for c in fit.candidates} == set(default_chains(COSTS))
    assert [c["widths"] for c in fit.candidates if c["accuracy"] is None] == [[1.0]]  # 16 per sample: over budget


def test_a_budget_only_the_narrow_first_width_reaches_keeps_it():
    logits, targets = _data()
    fit = fit_width_cascade(logits, targets, COSTS, 3.0)
    assert fit.widths[0] == 0.25
    skipped = [c for c in fit.candidates if c["accuracy"] is None]
    assert [c["widths"] for c in skipped] == [[0.5], [1.0], [0.5, 1.0]]


def test_default_chains_are_every_width_alone_every_pair_with_the_widest_and_all_widths():
    assert default_chains([1.0, 0.25, 0.5]) == [(0.25,), (0.5,), (1.0,), (0.25, 1.0), (0.5, 1.0), (0.25, 0.5, 1.0)]
    assert default_chains([0.5, 1.0]) == [(0.5,), (1.0,), (0.5, 1.0)]
    assert default_chains([1.0]) == [(1.0,)]


def test_a_generous_budget_runs_the_widest_width_alone():
    logits, targets = _data()
    fit = fit_width_cascade(logits, targets, COSTS, 3 * COSTS[1.0])
    assert fit.widths == (1.0,) and fit.calibration.accuracy == 1.0 and fit.calibration.mean_flops == COSTS[1.0]


def test_a_per_sample_cap_cuts_every_chain_back_to_what_it_affords():
    logits, targets = _data()
    fit = fit_width_cascade(logits, targets, COSTS, 20.0, max_flops=COSTS[1.0])
    assert fit.widths == (1.0,)  # every cascade ending at 1.0 costs more than 1.0 alone for some samples
    assert {tuple(c["widths"]) for c in fit.candidates} == {(0.25,), (0.5,), (1.0,), (0.25, 0.5)}
    with pytest.raises(ConfigError, match=r"per-sample cap of 0\.5 FLOPs is below every chain's first width"):
        fit_width_cascade(logits, targets, COSTS, 10.0, max_flops=0.5)
    fit = fit_width_cascade(logits, targets, COSTS, 10.0, max_flops=3.0)  # only 0.25 (1) fits: 0.5 (4) is cut
    assert fit.widths == (0.25,)
    assert [c["widths"] for c in fit.candidates if c.get("cut_by_cap")] == [[0.5], [1.0], [0.5, 1.0]]


def test_bad_budgets_and_chains_are_clear_errors():
    logits, targets = _data()
    with pytest.raises(ConfigError, match="cheapest reachable is 1"):
        fit_width_cascade(logits, targets, COSTS, 0.5)
    with pytest.raises(ConfigError, match="increasing widths"):
        fit_width_cascade(logits, targets, COSTS, 10.0, chains=[(1.0, 0.5)])
    with pytest.raises(ConfigError, match=r"\[0\.75\] missing"):
        fit_width_cascade(logits, targets, COSTS, 10.0, chains=[(0.75, 1.0)])
    with pytest.raises(ConfigError, match="no chains"):
        fit_width_cascade(logits, targets, COSTS, 10.0, chains=[])
