import math

import pytest

from dynamicnets.errors import ConfigError
from dynamicnets.profiling.frontier import (FrontierPoint, compare_to_frontier, frontier, static_accuracy_at,
                                            verdict)

STATIC = [FrontierPoint("w8", 100.0, 0.80), FrontierPoint("w16", 200.0, 0.90), FrontierPoint("w32", 400.0, 0.92),
          FrontierPoint("w32-bad", 500.0, 0.85)]


def test_frontier_drops_dominated_points_and_sorts_by_cost():
    line = frontier(list(reversed(STATIC)))
    assert [p.name for p in line] == ["w8", "w16", "w32"]


def test_static_accuracy_interpolates_between_frontier_points_and_is_flat_beyond():
    assert static_accuracy_at(STATIC, 150.0) == pytest.approx(0.85)
    assert static_accuracy_at(STATIC, 200.0) == pytest.approx(0.90)
    assert static_accuracy_at(STATIC, 300.0) == pytest.approx(0.91)
    assert static_accuracy_at(STATIC, 10_000.0) == pytest.approx(0.92)  # the dominated 500-cost model is ignored
    assert static_accuracy_at(STATIC, 99.0) is None


def test_compare_calls_a_win_only_beyond_the_noise():
    dynamic = [FrontierPoint("b1", 150.0, 0.86), FrontierPoint("b2", 300.0, 0.95), FrontierPoint("b3", 50.0, 0.81)]
    loose = compare_to_frontier(STATIC, dynamic)
    assert [c.wins for c in loose] == [True, True, True]
    assert loose[0].margin == pytest.approx(0.01)
    assert loose[2].static_accuracy is None and loose[2].margin == pytest.approx(0.01)
    strict = compare_to_frontier(STATIC, dynamic, samples=500)
    # 1 point at n=500 is within 2 standard errors (about 2 x 2.2 points); 4 points at 300 is not
    assert strict[0].noise == pytest.approx(math.sqrt(2 * 0.855 * 0.145 / 500))
    assert [c.wins for c in strict] == [False, True, True]  # the cheaper-than-all point needs only margin >= 0


def test_a_point_below_the_frontier_loses_and_the_verdict_says_so():
    comparisons = compare_to_frontier(STATIC, [FrontierPoint("b", 300.0, 0.88), FrontierPoint("c", 60.0, 0.7)])
    assert not any(c.wins for c in comparisons)
    text = verdict(comparisons, model="multi-exit", cost_name="mean FLOPs")
    assert text.startswith("no honest win") and "-3.00 points" in text


def test_verdict_names_the_best_win():
    comparisons = compare_to_frontier(STATIC, [FrontierPoint("b", 300.0, 0.95)], samples=1000)
    text = verdict(comparisons, model="cascade", cost_name="mean FLOPs", format_cost=lambda c: f"{c:.0f} FLOPs")
    assert "beats every static model" in text and "+4.00 points" in text and "300 FLOPs" in text


@pytest.mark.parametrize("bad, match", [
    ([], "static must hold"),
    ([FrontierPoint("z", 0.0, 0.5)], "cost 0.0"),
    ([FrontierPoint("p", 1.0, 91.0)], "accuracy 91.0"),
])
def test_bad_points_are_clear_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        compare_to_frontier(bad, [FrontierPoint("d", 1.0, 0.5)])


def test_bad_sample_count():
    with pytest.raises(ConfigError, match="samples must be >= 1"):
        compare_to_frontier(STATIC, [FrontierPoint("d", 1.0, 0.5)], samples=0)


def test_paired_noise_uses_the_per_sample_differences():
    import torch

    n = 1000
    gen = torch.Generator().manual_seed(0)
    low = torch.rand(n, generator=gen) < 0.90
    high = low | (torch.rand(n, generator=gen) < 0.5)  # right wherever low is, and on half of the rest
    dyn = high.clone()
    static = [FrontierPoint("lo", 100.0, low.float().mean().item(), low),
              FrontierPoint("hi", 300.0, high.float().mean().item(), high)]
    (c,) = compare_to_frontier(static, [FrontierPoint("dyn", 200.0, dyn.float().mean().item(), dyn)], samples=n)
    diff = dyn.double() - (0.5 * low.double() + 0.5 * high.double())
    assert c.noise == pytest.approx(float(diff.std() / n ** 0.5))
    assert c.margin == pytest.approx(float(diff.mean()))
    unpaired = compare_to_frontier([FrontierPoint(p.name, p.cost, p.accuracy) for p in static],
                                   [FrontierPoint("dyn", 200.0, c.point.accuracy)], samples=n)[0]
    assert c.noise < unpaired.noise  # pairing removes the shared samples' noise
