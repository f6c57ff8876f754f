"""Budget calibration with a confidence: the budget holds on data the calibration did not see.

The coverage tests repeat {draw a calibration sample, calibrate, draw a fresh sample, check
the budget} `R` times. At confidence 0.9 the budget holds with probability about 0.9; the
observed rate is binomial with standard deviation `sqrt(0.9 * 0.1 / R)`, so the tests accept
anything above `0.9 - 3 sd` (a false alarm about once in 700 runs even if the true rate were
exactly 0.9). Plain mean calibration puts the calibration mean *at* the budget, so a fresh
sample's mean lands on either side about equally often: its rate is near 0.5 and the tests
check it stays below 0.7, more than 4 sd above 0.5.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dynamicnets as dn
from dynamicnets import ConfigError
from dynamicnets.data.embedded import digits_arrays
from dynamicnets.gates import get_criterion
from dynamicnets.inference import (
    calibrate,
    calibrate_gate_policy,
    calibrate_thresholds,
    calibrate_token_policy,
    collect_exit_logits,
    cost_spread,
    exit_decisions,
    fit_gate_rate,
)

COSTS = [10.0, 25.0, 40.0, 100.0]
CONFIDENCE = 0.9


def _floor(repeats: int, confidence: float = CONFIDENCE) -> float:
    return confidence - 3 * math.sqrt(confidence * (1 - confidence) / repeats)


def _synthetic(num: int, gen: torch.Generator, classes: int = 10):
    """Exits that get more accurate and more confident with depth (a known distribution)."""
    targets = torch.randint(0, classes, (num,), generator=gen)
    exit_logits = []
    for signal in [1.0, 2.0, 3.0, 5.0]:
        logits = torch.randn(num, classes, generator=gen) * 1.5
        logits[torch.arange(num), targets] += signal * torch.rand(num, generator=gen) * 2
        exit_logits.append(logits)
    return exit_logits, targets


def _realised_mean(exit_logits, thresholds, costs) -> float:
    scores = [get_criterion("maxprob").score(logits) for logits in exit_logits]
    return float(torch.tensor(costs, dtype=torch.float64)[exit_decisions(scores, thresholds)].mean())


def _coverage(draw, costs, budget, repeats, n_eval):
    """Fraction of repeats whose fresh sample met the budget, plain and at `CONFIDENCE`,
    with the realised means and the standard deviations the calibrations predicted.
    `draw()` gives one repeat's `((calibration logits, targets), (fresh logits, targets))`."""
    held = {None: 0, CONFIDENCE: 0}
    realised, predicted = {None: [], CONFIDENCE: []}, {None: [], CONFIDENCE: []}
    for _ in range(repeats):
        (cal_logits, cal_targets), (fresh_logits, _) = draw()
        for confidence in held:
            # 14 bisection steps: log p to within 0.01, a threshold choice as fine as the data's
            cal = calibrate_thresholds(cal_logits, cal_targets, costs, budget, iterations=14,
                                       confidence=confidence, eval_size=n_eval)
            spent = _realised_mean(fresh_logits, cal.policy.thresholds, costs)
            held[confidence] += spent <= budget
            realised[confidence].append(spent)
            predicted[confidence].append(cal.spread.mean_std)
    return ({c: h / repeats for c, h in held.items()}, {c: torch.tensor(v) for c, v in realised.items()},
            {c: sum(v) / repeats for c, v in predicted.items()})


def test_confidence_calibration_meets_the_budget_on_fresh_synthetic_samples():
    gen = torch.Generator().manual_seed(0)
    repeats = 200
    rate, realised, predicted = _coverage(lambda: (_synthetic(100, gen), _synthetic(100, gen)), COSTS, 30.0,
                                          repeats, 100)
    assert rate[CONFIDENCE] >= _floor(repeats)
    assert rate[None] <= 0.7
    # the spread each calibration predicts is the spread the fresh means really have
    # (the observed sd of 200 means is itself uncertain by about 5%)
    for confidence in rate:
        observed = float(realised[confidence].std())
        assert predicted[confidence] == pytest.approx(observed, rel=0.2)
    # the price of the guarantee: about z * sd below the budget on average
    assert float(realised[CONFIDENCE].mean()) < float(realised[None].mean())


@pytest.fixture(scope="module")
def digits_exit_logits():
    """A `multi_exit_cnn` trained for two epochs (about a second) on one half of digits;
    the exit logits of the other half, the pool calibration and fresh samples are drawn from."""
    x, y = digits_arrays()
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    train, pool = order[: x.shape[0] // 2], order[x.shape[0] // 2:]
    torch.manual_seed(0)
    model = dn.create_model("multi_exit_cnn", width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(2):
        for batch in train.split(64):
            out = model(x[batch])
            loss = sum(nn.functional.cross_entropy(logits, y[batch]) for logits in out.exit_logits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    logits, targets = collect_exit_logits(model, [(x[pool], y[pool])])
    return logits, targets, list(model.exit_costs((1, 8, 8)))


@pytest.mark.slow
def test_confidence_calibration_meets_the_budget_on_fresh_digits_splits(digits_exit_logits):
    logits, targets, costs = digits_exit_logits
    assert float((logits[-1].argmax(1) == targets).double().mean()) > 0.6  # a model, not noise
    gen = torch.Generator().manual_seed(1)

    def draw():  # calibration and fresh samples of one repeat: disjoint random draws from the pool
        order = torch.randperm(targets.shape[0], generator=gen)
        return tuple(([l[rows] for l in logits], targets[rows]) for rows in (order[:300], order[300:600]))

    repeats = 300
    budget = 0.5 * (costs[0] + costs[-1])
    rate, _, _ = _coverage(draw, costs, budget, repeats, 300)
    assert rate[CONFIDENCE] >= _floor(repeats)
    assert rate[None] <= 0.7


def test_the_upper_bound_is_within_the_budget_and_the_spread_is_reported():
    gen = torch.Generator().manual_seed(2)
    logits, targets = _synthetic(400, gen)
    plain = calibrate_thresholds(logits, targets, COSTS, 40.0, eval_size=100)
    sure = calibrate_thresholds(logits, targets, COSTS, 40.0, confidence=0.95, eval_size=100)
    assert plain.spread.upper is None and plain.spread.confidence is None
    assert plain.spread.probability_within(40.0) == pytest.approx(0.5, abs=0.1)
    assert sure.spread.upper <= 40.0 < sure.spread.upper + 0.5  # tight, not far below
    assert sure.spread.probability_within(40.0) == pytest.approx(0.95, abs=0.01)
    assert sure.mean_flops == sure.spread.expected_mean < plain.mean_flops
    # the spread is that of the per-sample costs of the chosen thresholds, for 400 + 100 samples
    scores = [get_criterion("maxprob").score(l) for l in logits]
    per_sample = torch.tensor(COSTS, dtype=torch.float64)[exit_decisions(scores, sure.policy.thresholds)]
    assert sure.spread.per_sample_std == pytest.approx(float(per_sample.std()))
    assert sure.spread.mean_std == pytest.approx(float(per_sample.std()) * math.sqrt(1 / 400 + 1 / 100))
    assert (sure.spread.calibration_size, sure.spread.eval_size) == (400, 100)
    # a larger fresh batch averages more: a smaller margin, more of the budget spent
    large = calibrate_thresholds(logits, targets, COSTS, 40.0, confidence=0.95, eval_size=10_000)
    assert sure.mean_flops < large.mean_flops <= 40.0
    text = sure.spread.describe()
    assert "±" in text and "95% upper bound" in text and "100 fresh samples" in text


def test_cost_spread_of_constant_costs_is_exact():
    spread = cost_spread(torch.full((50,), 7.0), eval_size=10, confidence=0.99)
    assert (spread.expected_mean, spread.mean_std, spread.upper) == (7.0, 0.0, 7.0)
    assert spread.probability_within(7.0) == 1.0 and spread.probability_within(6.9) == 0.0


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1, True, "0.9", float("nan")])
def test_confidence_outside_0_1_is_refused_naming_confidence(confidence):
    logits, targets = _synthetic(50, torch.Generator().manual_seed(3))
    with pytest.raises(ConfigError, match=r"confidence must be a probability strictly between 0 and 1"):
        calibrate_thresholds(logits, targets, COSTS, 40.0, confidence=confidence)
    model = dn.create_model("multi_exit_cnn", width=4)
    with pytest.raises(ConfigError, match=r"calibrate: confidence"):
        calibrate(model, [(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))], 1e5, confidence=confidence)


@pytest.mark.parametrize("eval_size", [0, -5, 2.5, True])
def test_bad_eval_size_is_refused_naming_eval_size(eval_size):
    logits, targets = _synthetic(50, torch.Generator().manual_seed(3))
    with pytest.raises(ConfigError, match=r"eval_size must be a positive number of samples"):
        calibrate_thresholds(logits, targets, COSTS, 40.0, confidence=0.9, eval_size=eval_size)


def _gated(seed: int = 0):
    torch.manual_seed(seed)
    return dn.create_model("convnet_aig_resnet", depth=14, width=4, in_chans=1, num_classes=10).eval()


def test_gate_policy_with_confidence_holds_its_bound_within_what_the_rate_spends():
    model = _gated()
    x = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    plain = calibrate_gate_policy(model, x, 0.5, eval_size=128)
    sure = calibrate_gate_policy(model, x, 0.5, confidence=0.9, eval_size=128)
    assert plain.meta["rate_scale"] == 1.0 and plain.meta["cost"]["upper"] is None
    assert sure.meta["budget_flops"] == pytest.approx(plain.meta["budget_flops"])
    assert 0.0 < sure.meta["rate_scale"] < 1.0
    cost = sure.meta["cost"]
    assert cost["confidence"] == 0.9 and cost["upper"] <= sure.meta["budget_flops"]
    with torch.no_grad():  # the reported figures are what the policy spends on these inputs
        for policy in (plain, sure):
            spent = model(x, policy=policy).flops.double()
            assert policy.meta["cost"]["expected_mean"] == pytest.approx(float(spent.mean()))
            assert policy.meta["cost"]["per_sample_std"] == pytest.approx(float(spent.std()))
    assert cost["expected_mean"] < plain.meta["cost"]["expected_mean"]
    # the in-place fit folds the same thresholds into the model
    folded = _gated()
    fit = fit_gate_rate(folded, x, 0.5, confidence=0.9, eval_size=128)
    assert fit.rate_scale == sure.meta["rate_scale"]
    with torch.no_grad():
        assert torch.equal(folded(x).decisions["gates"], model(x, policy=sure).decisions["gates"])


def test_gate_and_token_calibration_refuse_a_bad_confidence():
    with pytest.raises(ConfigError, match="calibrate_gate_rate: confidence must be"):
        calibrate_gate_policy(_gated(), torch.randn(8, 1, 8, 8), 0.5, confidence=1.0)
    vit = dn.create_model("dynamic_vit_cifar", depth=4, embed_dim=32, num_heads=2).eval()
    with pytest.raises(ConfigError, match="calibrate_token_policy: confidence must be"):
        calibrate_token_policy(vit, [torch.randn(2, 3, 32, 32)], 1e6, confidence=0.0)


@pytest.mark.slow
def test_gate_policy_with_confidence_meets_the_rate_budget_on_fresh_inputs():
    """Coverage of the gate fit on a gated ResNet over digits-shaped random inputs."""
    model = _gated(1)
    gen = torch.Generator().manual_seed(5)
    repeats, n_cal, n_eval = 100, 100, 100
    held = {None: 0, CONFIDENCE: 0}
    for _ in range(repeats):
        x, fresh = torch.randn(n_cal, 1, 8, 8, generator=gen), torch.randn(n_eval, 1, 8, 8, generator=gen)
        for confidence in held:
            policy = calibrate_gate_policy(model, x, 0.5, confidence=confidence, eval_size=n_eval)
            with torch.no_grad():
                spent = float(model(fresh, policy=policy).flops.double().mean())
            held[confidence] += spent <= policy.meta["budget_flops"]
    assert held[CONFIDENCE] / repeats >= _floor(repeats)
    assert held[None] / repeats <= 0.7
