import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamicnets.errors import ConfigError
from dynamicnets.gates import CosineDecay, ExponentialDecay, LinearDecay

SCHEDULES = [ExponentialDecay, LinearDecay, CosineDecay]


@pytest.mark.parametrize("cls", SCHEDULES)
def test_hits_start_and_end_and_clamps(cls):
    s = cls(5.0, 0.5, 100)
    assert s(0) == 5.0
    assert s(-10) == 5.0
    assert s(100) == 0.5
    assert s(10_000) == 0.5
    assert isinstance(s(37), float)


@pytest.mark.parametrize("cls", SCHEDULES)
@given(total=st.integers(1, 1000))
def test_monotone_between_start_and_end(cls, total):
    s = cls(2.0, 0.1, total)
    values = [s(step) for step in range(total + 2)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert all(0.1 <= v <= 2.0 for v in values)


def test_midpoints():
    assert LinearDecay(1.0, 0.0, 10)(5) == pytest.approx(0.5)
    assert ExponentialDecay(1.0, 0.01, 10)(5) == pytest.approx(0.1)
    assert CosineDecay(1.0, 0.0, 10)(5) == pytest.approx(0.5)
    assert CosineDecay(1.0, 0.0, 12)(4) == pytest.approx(0.75)
    # exponential: same ratio every step
    s = ExponentialDecay(30.0, 1.0, 30)
    ratios = [s(i + 1) / s(i) for i in range(29)]
    assert max(ratios) - min(ratios) < 1e-12
    assert ratios[0] == pytest.approx(math.exp(math.log(1 / 30) / 30))


def test_increasing_schedule_works():
    s = LinearDecay(0.0, 1.0, 4)
    assert [s(i) for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_schedules_are_immutable():
    s = LinearDecay(1.0, 0.0, 10)
    with pytest.raises(Exception):
        s.start = 3.0  # type: ignore[misc]


@pytest.mark.parametrize("cls", SCHEDULES)
@pytest.mark.parametrize("total", [0, -5, 2.5, True])
def test_bad_total_steps(cls, total):
    with pytest.raises(ConfigError, match="total_steps"):
        cls(1.0, 0.5, total)


@pytest.mark.parametrize("start,end", [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_exponential_needs_positive_values(start, end):
    with pytest.raises(ConfigError, match="ExponentialDecay"):
        ExponentialDecay(start, end, 10)
