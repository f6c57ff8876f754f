"""The learned exit criterion: features, fitting, determinism, checkpoints, registry."""
from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from dynamicnets import CheckpointError, ConfigError, DataError
from dynamicnets.gates import (
    ExitCriterion,
    LearnedExitCriterion,
    entropy_confidence,
    fit_learned_exit,
    get_criterion,
    learned_exit_features,
    list_criteria,
    max_probability,
    score_margin,
)
from dynamicnets.inference import ExitPolicy
from dynamicnets.flops import counted_flops


def _synthetic(correct_if, num: int = 1500, classes: int = 10, exits: int = 2, seed: int = 0):
    """Logits of `exits` exits with spread-out confidence; each (sample, exit) is right
    exactly where `correct_if(max_probability)` holds, plus 10 % flipped labels as noise.

    Returns `(exit_logits, targets)`: `exits` tensors `(num, classes)` and `(num,)`.
    """
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes, (num,), generator=gen)
    exit_logits = []
    for _ in range(exits):
        logits = torch.randn(num, classes, generator=gen)
        boost = 6.0 * torch.rand(num, generator=gen)
        top = torch.randint(0, classes, (num,), generator=gen)
        logits[torch.arange(num), top] += boost
        maxprob = max_probability(logits)
        correct = correct_if(maxprob) ^ (torch.rand(num, generator=gen) < 0.1)
        # Roll each row's classes (every softmax statistic is unchanged) so that its argmax
        # lands on the shared target exactly where `correct`, on another class elsewhere.
        other = (targets + torch.randint(1, classes, (num,), generator=gen)) % classes
        destination = torch.where(correct, targets, other)
        shift = (destination - logits.argmax(1)) % classes
        source = (torch.arange(classes)[None, :] - shift[:, None]) % classes
        exit_logits.append(logits.gather(1, source))
    return exit_logits, targets


def _auroc(criterion: ExitCriterion, exit_logits, targets) -> float:
    scores = torch.cat([criterion.score(lg) for lg in exit_logits])
    labels = torch.cat([(lg.argmax(1) == targets) for lg in exit_logits])
    return float(roc_auc_score(labels.numpy(), scores.numpy()))


def test_features_shape_and_values():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    feats = learned_exit_features(logits)
    assert feats.shape == (2, 5) and feats.dtype == torch.float32
    probs = torch.softmax(logits, 1).sort(1, descending=True).values
    torch.testing.assert_close(feats[:, :3], probs[:, :3])
    torch.testing.assert_close(feats[:, 3], score_margin(logits))
    torch.testing.assert_close(feats[:, 4], entropy_confidence(logits))
    assert learned_exit_features(torch.randn(7, 10), top_k=5).shape == (7, 7)
    # fewer classes than top_k: padded with zero probabilities
    two = learned_exit_features(torch.tensor([[1.0, -1.0]]), top_k=4)
    assert two.shape == (1, 6) and two[0, 2:4].tolist() == [0.0, 0.0]
    # scale-free quantities: all within [0, 1]
    wide = learned_exit_features(torch.randn(64, 10) * 50)
    assert bool(((wide >= 0) & (wide <= 1)).all())


def test_criterion_interface_and_cost():
    crit = LearnedExitCriterion()
    assert isinstance(crit, ExitCriterion) and crit.name == "learned" and not crit.uses_history
    logits = torch.randn(32, 10) * 3
    scores = crit.score(logits)
    assert scores.shape == (32,) and not scores.requires_grad
    assert bool(((scores >= 0) & (scores <= 1)).all())
    t = float(scores.median())
    assert torch.equal(crit.should_exit(logits, t), scores >= t)
    # a sample's score does not depend on the rest of the batch (the executor scores subsets)
    torch.testing.assert_close(crit.score(logits[5:9]), scores[5:9], rtol=0, atol=1e-6)
    # FLOPs the head adds per scored sample: 2 * (5 * 16 + 16 * 1)
    assert crit.flops_per_sample() == 192
    assert counted_flops(crit.score, logits) == 32 * crit.flops_per_sample()
    # accepted by ExitPolicy as a criterion instance
    assert ExitPolicy(criterion=crit, thresholds=[0.5]).check(2) is crit


def test_fit_learns_a_predictable_correctness():
    """Correct iff max-prob is high (+10 % noise): the head ranks held-out samples well."""
    high = lambda p: p > 0.5  # noqa: E731
    train_logits, train_targets = _synthetic(high, seed=0)
    test_logits, test_targets = _synthetic(high, seed=1)
    crit = fit_learned_exit(train_logits, train_targets)
    auroc = _auroc(crit, test_logits, test_targets)
    assert auroc > 0.8  # chance is 0.5
    # as good as the statistic that generated the labels, to within noise
    assert auroc > _auroc(get_criterion("maxprob"), test_logits, test_targets) - 0.03
    # and its probabilities mean something: accuracy of "score >= 0.5" as a classifier
    scores = torch.cat([crit.score(lg) for lg in test_logits])
    labels = torch.cat([(lg.argmax(1) == test_targets) for lg in test_logits])
    assert float(((scores >= 0.5) == labels).float().mean()) > 0.8


def test_fit_learns_what_a_fixed_statistic_cannot():
    """An over-confident exit: right for middling max-prob, wrong when near-certain or unsure.
    No monotone function of max-prob ranks that; the learned head does."""
    middle = lambda p: (p > 0.35) & (p < 0.8)  # noqa: E731
    train_logits, train_targets = _synthetic(middle, seed=2)
    test_logits, test_targets = _synthetic(middle, seed=3)
    crit = fit_learned_exit(train_logits, train_targets)
    learned = _auroc(crit, test_logits, test_targets)
    fixed = _auroc(get_criterion("maxprob"), test_logits, test_targets)
    assert learned > 0.8
    assert learned > fixed + 0.15


def test_seeded_fit_is_deterministic_and_leaves_global_rng_alone():
    exit_logits, targets = _synthetic(lambda p: p > 0.5, num=400, seed=4)
    torch.manual_seed(123)
    a = fit_learned_exit(exit_logits, targets, steps=50, seed=7)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # fitting drew nothing from the global generator
    b = fit_learned_exit(exit_logits, targets, steps=50, seed=7)
    c = fit_learned_exit(exit_logits, targets, steps=50, seed=8)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.hidden.weight, c.hidden.weight)
    assert not a.training


def test_state_dict_round_trip(tmp_path):
    exit_logits, targets = _synthetic(lambda p: p > 0.5, num=400, seed=5)
    crit = fit_learned_exit(exit_logits, targets, top_k=4, hidden=8, steps=40)
    path = tmp_path / "learned_exit.pt"
    torch.save({"learned_exit": crit.state_dict()}, path)
    state = torch.load(path, weights_only=True)["learned_exit"]
    loaded = LearnedExitCriterion.from_state_dict(state, source=str(path))
    assert loaded.top_k == 4 and loaded.hidden.out_features == 8
    probe = torch.randn(50, 10) * 4
    assert torch.equal(loaded.score(probe), crit.score(probe))
    # the fitted standardisation travels with the weights
    assert torch.equal(loaded.feature_mean, crit.feature_mean) and not torch.equal(
        loaded.feature_std, torch.ones_like(loaded.feature_std)
    )


def test_from_state_dict_rejects_foreign_weights():
    state = LearnedExitCriterion().state_dict()
    with pytest.raises(CheckpointError, match="missing keys \\['out.bias'\\]"):
        LearnedExitCriterion.from_state_dict({k: v for k, v in state.items() if k != "out.bias"}, source="ck.pt")
    with pytest.raises(CheckpointError, match="ck.pt"):
        LearnedExitCriterion.from_state_dict({**state, "extra": torch.zeros(1)}, source="ck.pt")
    with pytest.raises(CheckpointError, match="inconsistent shapes"):
        LearnedExitCriterion.from_state_dict({**state, "out.weight": torch.zeros(1, 7)})
    with pytest.raises(CheckpointError, match="hidden.weight"):
        LearnedExitCriterion.from_state_dict({**state, "hidden.weight": torch.zeros(16)})


def test_registry_points_to_fitting():
    with pytest.raises(ConfigError, match="fit_learned_exit") as info:
        get_criterion("learned")
    assert "ExitPolicy(criterion=" in str(info.value)
    with pytest.raises(ConfigError, match="fit_learned_exit"):
        ExitPolicy(criterion="learned", thresholds=[0.5]).check(2)
    assert list_criteria() == ["entropy", "margin", "maxprob", "patience"]  # unchanged


def test_bad_inputs_raise_clear_errors():
    exit_logits, targets = _synthetic(lambda p: p > 0.5, num=100, seed=6)
    with pytest.raises(DataError, match=r"exit_logits\[1\]"):
        fit_learned_exit([exit_logits[0], exit_logits[1][:50]], targets)
    with pytest.raises(DataError, match="targets must lie in"):
        fit_learned_exit(exit_logits, targets + 10)
    with pytest.raises(DataError, match="integer"):
        fit_learned_exit(exit_logits, targets.float())
    always_right = [torch.nn.functional.one_hot(targets, 10).float() * 5]
    with pytest.raises(DataError, match="nothing to learn"):
        fit_learned_exit(always_right, targets)
    with pytest.raises(ConfigError, match="non-empty list"):
        fit_learned_exit([], targets)
    with pytest.raises(ConfigError, match="top_k"):
        fit_learned_exit(exit_logits, targets, top_k=1)
    with pytest.raises(ConfigError, match="steps"):
        fit_learned_exit(exit_logits, targets, steps=0)
    with pytest.raises(ConfigError, match="lr"):
        fit_learned_exit(exit_logits, targets, lr=math.nan)
    with pytest.raises(ConfigError, match="hidden"):
        LearnedExitCriterion(hidden=0)
    with pytest.raises(ConfigError, match="criterion.to"):
        LearnedExitCriterion().score(torch.randn(2, 10, device="meta"))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        learned_exit_features(torch.randn(10))
