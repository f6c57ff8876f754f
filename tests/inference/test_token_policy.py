"""`TokenPolicy`: keep-ratio and threshold semantics per pruning stage, `min_tokens`, which
tokens `select` keeps, and bad values as `ConfigError`s naming the argument."""
from __future__ import annotations

import math

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.inference import TokenPolicy
from dynamicnets.layers.token_batching import TokenBatching

INF = float("inf")


def prune_through(policy: TokenPolicy, scores: torch.Tensor, stages: int) -> list[list[int]]:
    """Counts per stage when the same `(B, n)` scores are pruned stage after stage (tokens
    dropped earlier get -inf)."""
    scores = scores.clone()
    counts = []
    for stage in range(stages):
        keep = policy.select(scores, stage, stages)
        counts.append(keep.sum(1).tolist())
        scores = scores.masked_fill(~keep, -INF)
    return counts


def test_keep_ratio_is_multiplicative_over_stages():
    """0.7 at three stages keeps ceil(0.7 n) of the tokens entering each stage: 70%, 49%, 34%."""
    policy = TokenPolicy(keep_ratio=0.7)
    counts = prune_through(policy, torch.rand(2, 196), 3)
    assert counts == [[138, 138], [97, 97], [68, 68]]
    assert [math.ceil(0.7 * 196), math.ceil(0.7 * 138), math.ceil(0.7 * 97)] == [138, 97, 68]


def test_keep_ratio_product_is_not_rounded_up_by_float_error():
    """0.7 * 10 is 7.000000000000001 in floating point: still 7 tokens."""
    policy = TokenPolicy(keep_ratio=0.7)
    assert policy.keep_counts(torch.rand(1, 10), 0, 1).tolist() == [7]
    assert TokenPolicy(keep_ratio=0.3).keep_counts(torch.rand(1, 10), 0, 1).tolist() == [3]
    assert TokenPolicy(keep_ratio=0.35).keep_counts(torch.rand(1, 10), 0, 1).tolist() == [4]


def test_keep_ratio_per_stage_sequence():
    policy = TokenPolicy(keep_ratio=(0.9, 0.5, 1.0))
    assert prune_through(policy, torch.rand(3, 64), 3) == [[58] * 3, [29] * 3, [29] * 3]
    assert TokenPolicy(keep_ratio=[0.5, 0.5]).keep_counts(torch.rand(1, 8), 1, 2).tolist() == [4]


def test_keep_ratio_counts_only_the_tokens_a_sample_still_has():
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, -INF, -INF, 0.1]])
    assert TokenPolicy(keep_ratio=0.5).keep_counts(scores, 0, 1).tolist() == [2, 1]


def test_threshold_counts_differ_per_sample():
    scores = torch.tensor([[0.9, 0.8, 0.2, 0.1], [0.95, 0.1, 0.2, 0.3], [0.6, 0.7, 0.8, 0.9]])
    policy = TokenPolicy(threshold=0.5)
    assert policy.keep_counts(scores, 0, 1).tolist() == [2, 1, 4]
    keep = policy.select(scores, 0, 1)
    assert keep.tolist() == [[True, True, False, False], [True, False, False, False], [True] * 4]
    assert policy.token_batching is TokenBatching.PACK


def test_threshold_is_strict_and_per_stage():
    scores = torch.tensor([[0.5, 0.6, 0.7, 0.8]])
    policy = TokenPolicy(threshold=(0.5, 0.65))
    assert policy.keep_counts(scores, 0, 2).tolist() == [3]  # 0.5 is not above 0.5
    assert policy.keep_counts(scores, 1, 2).tolist() == [2]


def test_min_tokens_keeps_the_best_scored_and_never_more_than_available():
    scores = torch.tensor([[0.1, 0.3, 0.2, 0.05], [0.1, -INF, -INF, -INF]])
    policy = TokenPolicy(threshold=0.9, min_tokens=2)
    assert policy.keep_counts(scores, 0, 1).tolist() == [2, 1]
    assert policy.select(scores, 0, 1).tolist() == [[False, True, True, False], [True, False, False, False]]
    assert TokenPolicy(keep_ratio=0.01, min_tokens=3).keep_counts(torch.rand(2, 10), 0, 1).tolist() == [3, 3]


def test_select_keeps_the_best_scored_ties_by_position_never_absent_tokens():
    scores = torch.tensor([[0.2, 0.9, 0.2, 0.5, -INF, 0.2]])
    keep = TokenPolicy(keep_ratio=0.6).select(scores, 0, 1)  # ceil(0.6 * 5) = 3 of 5 present
    assert keep.tolist() == [[True, True, False, True, False, False]]
    everything = TokenPolicy(keep_ratio=1.0).select(scores, 0, 1)
    assert everything.tolist() == [[True, True, True, True, False, True]]


def test_select_agrees_with_keep_counts_on_random_scores():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(8, 30, generator=gen)
    scores[torch.rand(8, 30, generator=gen) < 0.3] = -INF
    for policy in (TokenPolicy(keep_ratio=0.45), TokenPolicy(threshold=0.4, min_tokens=2)):
        keep = policy.select(scores, 0, 1)
        assert keep.sum(1).tolist() == policy.keep_counts(scores, 0, 1).tolist()
        assert not bool((keep & torch.isinf(scores)).any())
        lowest_kept = scores.masked_fill(~keep, INF).amin(1)
        highest_dropped = scores.masked_fill(keep, -INF).amax(1)
        assert bool((lowest_kept >= highest_dropped).all())


@pytest.mark.parametrize("kwargs, name", [
    ({}, "exactly one of keep_ratio and threshold"),
    ({"keep_ratio": 0.5, "threshold": 0.5}, "exactly one of keep_ratio and threshold"),
    ({"keep_ratio": 0.0}, r"keep_ratio must be in \(0, 1\]"),
    ({"keep_ratio": 1.5}, r"keep_ratio must be in \(0, 1\]"),
    ({"keep_ratio": float("nan")}, "keep_ratio"),
    ({"keep_ratio": True}, "keep_ratio"),
    ({"keep_ratio": "0.5"}, "keep_ratio"),
    ({"keep_ratio": (0.5, 0.0)}, "keep_ratio"),
    ({"keep_ratio": ()}, "keep_ratio is an empty sequence"),
    ({"threshold": 1.0}, r"threshold must be in \[0, 1\)"),
    ({"threshold": -0.1}, "threshold"),
    ({"threshold": [0.2, 2.0]}, "threshold"),
    ({"threshold": 0.5, "min_tokens": 0}, "min_tokens must be an int >= 1"),
    ({"threshold": 0.5, "min_tokens": 1.5}, "min_tokens"),
    ({"threshold": 0.5, "token_batching": "padding"}, "token batching must be one of"),
])
def test_bad_values_name_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        TokenPolicy(**kwargs)


def test_edges_are_accepted():
    assert TokenPolicy(keep_ratio=1.0).keep_ratio == 1.0
    assert TokenPolicy(threshold=0.0).threshold == 0.0
    assert TokenPolicy(keep_ratio=0.5, token_batching="bucket").token_batching is TokenBatching.BUCKET


def test_wrong_number_of_stages_or_stage_names_the_argument():
    scores = torch.rand(1, 8)
    with pytest.raises(ConfigError, match="keep_ratio has 2 entries but the model prunes at 3 stages"):
        TokenPolicy(keep_ratio=(0.5, 0.5)).keep_counts(scores, 0, 3)
    with pytest.raises(ConfigError, match="threshold has 3 entries but the model prunes at 2 stages"):
        TokenPolicy(threshold=(0.5, 0.5, 0.5)).select(scores, 0, 2)
    for stage in (3, -1, 1.0):
        with pytest.raises(ConfigError, match=r"stage must be an int in \[0, 3\)"):
            TokenPolicy(keep_ratio=0.5).keep_counts(scores, stage, 3)
