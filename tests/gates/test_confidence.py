import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamicnets.errors import ConfigError
from dynamicnets.gates import (
    ExitCriterion,
    Patience,
    PatienceCriterion,
    agreement_streaks,
    entropy_confidence,
    get_criterion,
    list_criteria,
    max_probability,
    score_margin,
)

# row 0 uniform, row 1 fairly sure, row 2 nearly one-hot
LOGITS = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.5, 0.0, 0.0], [20.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("fn", [max_probability, entropy_confidence, score_margin])
def test_uniform_lowest_one_hot_highest(fn):
    scores = fn(LOGITS)
    assert scores.shape == (3,)
    assert scores[0] < scores[1] < scores[2]
    assert scores[2] == pytest.approx(1.0, abs=1e-6)


def test_exact_values():
    torch.testing.assert_close(max_probability(LOGITS)[0], torch.tensor(0.25))
    torch.testing.assert_close(entropy_confidence(LOGITS)[0], torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(score_margin(LOGITS)[0], torch.tensor(0.0))
    p = torch.softmax(LOGITS[1], -1)
    torch.testing.assert_close(max_probability(LOGITS)[1], p[0])
    torch.testing.assert_close(score_margin(LOGITS)[1], p[0] - p[1])
    h = -(p * p.log()).sum()
    torch.testing.assert_close(entropy_confidence(LOGITS)[1], 1 - h / math.log(4))


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[1000.0, -1000.0, 0.0]], dtype=torch.float16)
    for fn in (max_probability, entropy_confidence, score_margin):
        value = fn(logits)
        assert torch.isfinite(value).all() and value.item() == pytest.approx(1.0)


def test_single_class_is_fully_confident():
    logits = torch.randn(5, 1)
    for fn in (max_probability, entropy_confidence, score_margin):
        assert torch.equal(fn(logits), torch.ones(5))


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 8), c=st.integers(2, 12), scale=st.floats(0.01, 30.0), seed=st.integers(0, 2**31))
def test_score_ranges(b, c, scale, seed):
    logits = scale * torch.randn(b, c, generator=torch.Generator().manual_seed(seed))
    mp = max_probability(logits)
    assert torch.all(mp >= 1 / c - 1e-6) and torch.all(mp <= 1 + 1e-6)
    for fn in (entropy_confidence, score_margin):
        s = fn(logits)
        assert s.shape == (b,)
        assert torch.all(s >= 0) and torch.all(s <= 1 + 1e-6)


def test_bad_logits_shape():
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        max_probability(torch.randn(2, 3, 4))


HISTORY = [
    torch.tensor([0, 1, 2, 3, 4]),
    torch.tensor([0, 2, 2, 3, 5]),
    torch.tensor([0, 2, 1, 3, 6]),
    torch.tensor([0, 2, 1, 1, 7]),
    torch.tensor([1, 2, 1, 1, 8]),
]


def test_agreement_streaks():
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1],
            [2, 1, 2, 2, 1],
            [3, 2, 1, 3, 1],
            [4, 3, 2, 1, 1],
            [1, 4, 3, 2, 1],
        ]
    )
    assert torch.equal(agreement_streaks(HISTORY), expected)


@pytest.mark.parametrize(
    "k,expected",
    [
        (1, [0, 0, 0, 0, 0]),
        (2, [1, 2, 1, 1, -1]),
        (3, [2, 3, 4, 2, -1]),
        (4, [3, 4, -1, -1, -1]),
        (5, [-1, -1, -1, -1, -1]),
    ],
)
def test_patience_first_exit_index(k, expected):
    assert torch.equal(Patience(k)(HISTORY), torch.tensor(expected))


def test_patience_accepts_logits_history():
    logits_history = [torch.nn.functional.one_hot(p, 9).float() * 3 for p in HISTORY]
    assert torch.equal(Patience(3)(logits_history), Patience(3)(HISTORY))


def test_patience_criterion_is_stateless_over_exits():
    crit = get_criterion("patience")
    assert isinstance(crit, PatienceCriterion) and crit.uses_history
    # Driving it exit by exit with growing history gives the same exits as Patience(3).
    exited_at = torch.full((5,), -1)
    for e in range(len(HISTORY)):
        go = crit.should_exit(HISTORY[: e + 1], threshold=3) & (exited_at == -1)
        exited_at[go] = e
    assert torch.equal(exited_at, Patience(3)(HISTORY))
    # calling again with the same history gives the same answer
    assert torch.equal(crit.should_exit(HISTORY, 2), crit.should_exit(HISTORY, 2))
    assert torch.equal(crit.score(HISTORY), torch.tensor([1.0, 4.0, 3.0, 2.0, 1.0]))


def test_patience_bad_arguments():
    with pytest.raises(ConfigError, match="patience"):
        Patience(0)
    with pytest.raises(ConfigError, match="patience"):
        PatienceCriterion().should_exit(HISTORY, 1.5)
    with pytest.raises(ValueError, match="non-empty"):
        Patience(2)([])


@pytest.mark.parametrize("name,fn", [("maxprob", max_probability), ("entropy", entropy_confidence), ("margin", score_margin)])
def test_logit_criteria_share_interface(name, fn):
    crit = get_criterion(name)
    assert isinstance(crit, ExitCriterion) and crit.name == name and not crit.uses_history
    torch.testing.assert_close(crit.score(LOGITS), fn(LOGITS))
    threshold = fn(LOGITS)[1].item()
    assert crit.should_exit(LOGITS, threshold).tolist() == [False, True, True]
    assert crit.should_exit(LOGITS, 1.1).tolist() == [False, False, False]
    assert crit.should_exit(LOGITS, 0.0).tolist() == [True, True, True]


def test_registry_names_and_unknown_name():
    assert list_criteria() == ["entropy", "margin", "maxprob", "patience"]
    with pytest.raises(ConfigError) as info:
        get_criterion("confidence")
    message = str(info.value)
    assert "'confidence'" in message
    for name in list_criteria():
        assert name in message
