import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamicnets.errors import ConfigError
from dynamicnets.gates import (
    BernoulliPolicy,
    CategoricalPolicy,
    MovingAverageBaseline,
    cost_aware_reward,
    reinforce_loss,
)

action_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 6), action_shape=action_shapes, seed=st.integers(0, 2**31))
def test_bernoulli_sample_matches_torch_distribution(batch, action_shape, seed):
    logits = torch.randn(batch, *action_shape, generator=torch.Generator().manual_seed(seed))
    policy = BernoulliPolicy()
    actions, log_prob = policy.sample(logits, torch.Generator().manual_seed(seed))
    assert actions.shape == logits.shape and log_prob.shape == (batch,)
    assert torch.all((actions == 0) | (actions == 1))
    dist = torch.distributions.Bernoulli(logits=logits)
    expected = dist.log_prob(actions).reshape(batch, -1).sum(1)
    torch.testing.assert_close(log_prob, expected)
    torch.testing.assert_close(policy.entropy(logits), dist.entropy().reshape(batch, -1).sum(1))
    assert torch.equal(policy.greedy(logits), (logits > 0).float())


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 6), action_shape=action_shapes, k=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_categorical_sample_matches_torch_distribution(batch, action_shape, k, seed):
    logits = torch.randn(batch, *action_shape, k, generator=torch.Generator().manual_seed(seed))
    policy = CategoricalPolicy()
    actions, log_prob = policy.sample(logits, torch.Generator().manual_seed(seed))
    assert actions.shape == (batch, *action_shape) and actions.dtype == torch.int64
    assert log_prob.shape == (batch,)
    dist = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(log_prob, dist.log_prob(actions).reshape(batch, -1).sum(1))
    torch.testing.assert_close(policy.entropy(logits), dist.entropy().reshape(batch, -1).sum(1))
    assert torch.equal(policy.greedy(logits), logits.argmax(-1))


@pytest.mark.parametrize("policy,shape", [(BernoulliPolicy(), (16, 5)), (CategoricalPolicy(), (16, 3, 4))])
def test_sampling_repeats_with_same_generator(policy, shape):
    logits = torch.randn(shape)
    a, la = policy.sample(logits, torch.Generator().manual_seed(9))
    b, lb = policy.sample(logits, torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_sample_frequencies():
    draws = 40_000
    cat_logits = torch.tensor([0.5, -1.0, 1.0])
    actions, _ = CategoricalPolicy().sample(cat_logits.expand(draws, 3), torch.Generator().manual_seed(0))
    freq = torch.bincount(actions, minlength=3).float() / draws
    torch.testing.assert_close(freq, torch.softmax(cat_logits, -1), atol=0.012, rtol=0)
    bern_logits = torch.tensor([-1.0, 0.0, 2.0])
    actions, _ = BernoulliPolicy().sample(bern_logits.expand(draws, 3), torch.Generator().manual_seed(0))
    torch.testing.assert_close(actions.mean(0), torch.sigmoid(bern_logits), atol=0.012, rtol=0)


def test_masked_categorical_choice_is_never_sampled_and_entropy_is_finite():
    logits = torch.tensor([[0.0, float("-inf"), 0.0]] * 500, requires_grad=True)
    actions, log_prob = CategoricalPolicy().sample(logits, torch.Generator().manual_seed(0))
    assert not torch.any(actions == 1)
    entropy = CategoricalPolicy().entropy(logits)
    torch.testing.assert_close(entropy, torch.full((500,), torch.log(torch.tensor(2.0)).item()))
    (log_prob.sum() + entropy.sum()).backward()
    assert torch.all(torch.isfinite(logits.grad))


def test_reinforce_loss_value_and_gradient():
    log_prob = torch.tensor([-0.5, -1.0, -2.0], requires_grad=True)
    reward = torch.tensor([1.0, 0.0, 2.0])
    loss = reinforce_loss(log_prob, reward, baseline=1.0)
    # advantages (0, -1, 1): loss = -mean(adv * log_prob) = -(0 + 1 - 2) / 3
    torch.testing.assert_close(loss, torch.tensor(1.0 / 3.0))
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, 1.0, -1.0]) / 3)


def test_reinforce_step_raises_log_prob_of_positive_advantage_action():
    torch.manual_seed(0)
    logits = torch.zeros(2, 4, requires_grad=True)
    policy = BernoulliPolicy()
    actions, log_prob = policy.sample(logits, torch.Generator().manual_seed(1))
    reward = torch.tensor([1.0, -1.0])  # sample 0 good, sample 1 bad
    reinforce_loss(log_prob, reward, baseline=0.0).backward()
    with torch.no_grad():
        new_logits = logits - 0.5 * logits.grad
        new_log_prob = policy.log_prob(new_logits, actions)
    assert new_log_prob[0] > log_prob[0].detach()
    assert new_log_prob[1] < log_prob[1].detach()


def test_reinforce_learns_a_bandit():
    """Three-armed bandit with costs: REINFORCE + baseline finds the best arm."""
    arm_reward = torch.tensor([0.2, 1.0, 0.5])
    logits = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    baseline = MovingAverageBaseline(momentum=0.9)
    policy = CategoricalPolicy()
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        actions, log_prob = policy.sample(logits.expand(32, 3), gen)
        reward = arm_reward[actions]
        loss = reinforce_loss(log_prob, reward, baseline(), policy.entropy(logits.expand(32, 3)), 0.001)
        opt.zero_grad()
        loss.backward()
        opt.step()
        baseline.update(reward)
    assert torch.softmax(logits, -1)[0, 1] > 0.9
    assert 0.8 < baseline().item() <= 1.0


def test_entropy_bonus_and_its_checks():
    log_prob = torch.zeros(4)
    reward = torch.zeros(4)
    entropy = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss = reinforce_loss(log_prob, reward, entropy=entropy, entropy_weight=0.1)
    torch.testing.assert_close(loss, torch.tensor(-0.25))
    with pytest.raises(ValueError, match="entropy"):
        reinforce_loss(log_prob, reward, entropy_weight=0.1)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        reinforce_loss(log_prob, torch.zeros(5))


def test_no_gradient_flows_into_reward_or_baseline():
    log_prob = torch.randn(4, requires_grad=True)
    reward = torch.randn(4, requires_grad=True)
    baseline = torch.tensor(0.3, requires_grad=True)
    reinforce_loss(log_prob, reward, baseline).backward()
    assert reward.grad is None and baseline.grad is None


def test_moving_average_baseline_math():
    baseline = MovingAverageBaseline(momentum=0.9)
    assert baseline().item() == 0.0
    baseline.update(torch.tensor([1.0, 3.0]))  # first update: the batch mean
    assert baseline().item() == pytest.approx(2.0)
    baseline.update(torch.tensor([4.0, 6.0]))  # 0.9 * 2 + 0.1 * 5
    assert baseline().item() == pytest.approx(2.3)
    baseline.update(torch.tensor([0.0]))  # 0.9 * 2.3
    assert baseline().item() == pytest.approx(2.07)
    assert int(baseline.count) == 3


def test_baseline_forward_reads_only_and_state_round_trips():
    baseline = MovingAverageBaseline(momentum=0.5)
    baseline.update(torch.tensor([1.0]))
    before = {k: v.clone() for k, v in baseline.state_dict().items()}
    value = baseline()
    value += 100  # the returned tensor is a copy
    for k, v in baseline.state_dict().items():
        assert torch.equal(v, before[k])
    other = MovingAverageBaseline(momentum=0.5)
    other.load_state_dict(baseline.state_dict())
    assert other().item() == 1.0 and int(other.count) == 1
    assert set(baseline.state_dict()) == {"mean", "count"}
    assert list(baseline.parameters()) == []


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 2.0])
def test_bad_momentum(momentum):
    with pytest.raises(ConfigError, match="momentum"):
        MovingAverageBaseline(momentum)


def test_cost_aware_reward():
    correct = torch.tensor([True, True, False, True])
    cost = torch.tensor([0.0, 0.5, 0.3, 1.0])
    reward = cost_aware_reward(correct, cost, penalty=5.0, gamma=2.0)
    torch.testing.assert_close(reward, torch.tensor([1.0, 0.75, -5.0, 0.0]))
    linear = cost_aware_reward(correct, cost, penalty=1.0, gamma=1.0)
    torch.testing.assert_close(linear, torch.tensor([1.0, 0.5, -1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        cost_aware_reward(correct, torch.zeros(3))
    with pytest.raises(ConfigError, match="gamma"):
        cost_aware_reward(correct, cost, gamma=0.0)
