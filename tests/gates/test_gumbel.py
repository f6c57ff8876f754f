import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamicnets.errors import ConfigError
from dynamicnets.gates import (
    GumbelSigmoidGate,
    GumbelSoftmaxGate,
    gumbel_sigmoid,
    gumbel_softmax,
    sample_gumbel,
)

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, k=st.integers(1, 6), tau=st.floats(0.1, 5.0), seed=st.integers(0, 2**31))
def test_hard_gumbel_softmax_is_exactly_one_hot(shape, k, tau, seed):
    logits = torch.randn(*shape, k, generator=torch.Generator().manual_seed(seed))
    y = gumbel_softmax(logits, tau, hard=True, generator=torch.Generator().manual_seed(seed))
    assert y.shape == logits.shape and y.dtype == logits.dtype
    assert torch.all((y == 0) | (y == 1))
    assert torch.all(y.sum(-1) == 1)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, k=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_soft_gumbel_softmax_is_a_distribution(shape, k, seed):
    logits = torch.randn(*shape, k, generator=torch.Generator().manual_seed(seed))
    y = gumbel_softmax(logits, 0.5, hard=False, generator=torch.Generator().manual_seed(seed))
    assert torch.all(y >= 0)
    torch.testing.assert_close(y.sum(-1), torch.ones(shape))


def test_gumbel_softmax_along_other_dim():
    logits = torch.randn(4, 3, 7)
    y = gumbel_softmax(logits, hard=True, dim=1, generator=torch.Generator().manual_seed(0))
    assert torch.all(y.sum(1) == 1)


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_gradient_reaches_logits(hard):
    logits = torch.randn(8, 5, requires_grad=True)
    weights = torch.randn(8, 5)
    y = gumbel_softmax(logits, 0.7, hard=hard, generator=torch.Generator().manual_seed(1))
    (y * weights).sum().backward()
    assert logits.grad is not None
    assert torch.all(torch.isfinite(logits.grad))
    assert logits.grad.abs().sum() > 0


def test_hard_gradient_is_the_soft_samples_gradient():
    logits = torch.randn(6, 4, requires_grad=True)
    weights = torch.randn(6, 4)
    (gumbel_softmax(logits, 0.5, True, torch.Generator().manual_seed(3)) * weights).sum().backward()
    hard_grad = logits.grad.clone()
    logits.grad = None
    (gumbel_softmax(logits, 0.5, False, torch.Generator().manual_seed(3)) * weights).sum().backward()
    torch.testing.assert_close(hard_grad, logits.grad)


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_repeats_with_same_generator(hard):
    logits = torch.randn(32, 6)
    a = gumbel_softmax(logits, 1.0, hard, torch.Generator().manual_seed(123))
    b = gumbel_softmax(logits, 1.0, hard, torch.Generator().manual_seed(123))
    c = gumbel_softmax(logits, 1.0, hard, torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_relaxed_argmax_frequencies_match_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    draws = 40_000
    y = gumbel_softmax(logits.expand(draws, 4), 0.5, hard=False, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(y.argmax(-1), minlength=4).float() / draws
    # binomial std <= 0.0025 at this size; 0.012 is ~5 sigma.
    torch.testing.assert_close(freq, torch.softmax(logits, -1), atol=0.012, rtol=0)


def test_no_noise_is_deterministic_argmax_and_softmax():
    logits = torch.randn(10, 5)
    hard = gumbel_softmax(logits, 2.0, hard=True, noise=False)
    assert torch.equal(hard, torch.nn.functional.one_hot(logits.argmax(-1), 5).float())
    soft = gumbel_softmax(logits, 2.0, hard=False, noise=False)
    torch.testing.assert_close(soft, torch.softmax(logits / 2.0, -1))


def test_gumbel_noise_has_gumbel_moments():
    g = sample_gumbel(torch.empty(200_000), torch.Generator().manual_seed(0))
    euler_gamma = 0.5772156649
    assert abs(g.mean().item() - euler_gamma) < 0.01
    assert abs(g.var().item() - torch.pi**2 / 6) < 0.03
    assert torch.all(torch.isfinite(g))


@settings(max_examples=25, deadline=None)
@given(shape=shapes, threshold=st.floats(0.05, 0.95), seed=st.integers(0, 2**31))
def test_hard_gumbel_sigmoid_is_exactly_binary(shape, threshold, seed):
    logits = 3 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    y = gumbel_sigmoid(logits, 1.0, hard=True, threshold=threshold, generator=torch.Generator().manual_seed(seed))
    assert y.shape == logits.shape
    assert torch.all((y == 0) | (y == 1))


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_sigmoid_gradient_reaches_logits(hard):
    logits = torch.randn(16, requires_grad=True)
    gumbel_sigmoid(logits, 0.8, hard=hard, generator=torch.Generator().manual_seed(2)).sum().backward()
    assert torch.all(logits.grad > 0)  # sigmoid is increasing


def test_gumbel_sigmoid_on_frequency_is_sigmoid_of_logits():
    logits = torch.tensor([-1.5, 0.0, 0.7, 2.0])
    draws = 40_000
    y = gumbel_sigmoid(logits.expand(draws, 4), 1.0, hard=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y.mean(0), torch.sigmoid(logits), atol=0.012, rtol=0)


def test_gumbel_sigmoid_repeats_and_no_noise_thresholds():
    logits = torch.randn(50)
    a = gumbel_sigmoid(logits, 1.0, True, generator=torch.Generator().manual_seed(5))
    b = gumbel_sigmoid(logits, 1.0, True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    det = gumbel_sigmoid(logits, 1.0, True, noise=False)
    assert torch.equal(det, (logits > 0).float())


def test_gates_use_training_flag():
    logits = torch.randn(64, 4)
    gate = GumbelSoftmaxGate(tau=1.0, hard=True)
    train_out = gate(logits, generator=torch.Generator().manual_seed(0))
    assert torch.all(train_out.sum(-1) == 1)
    assert not torch.equal(train_out.argmax(-1), logits.argmax(-1))  # noise changed some
    gate.eval()
    for _ in range(2):
        assert torch.equal(gate(logits), torch.nn.functional.one_hot(logits.argmax(-1), 4).float())

    bgate = GumbelSigmoidGate(tau=0.5)
    bgate.eval()
    assert torch.equal(bgate(logits), (logits > 0).float())
    bgate.train()
    out = bgate(logits, tau=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.all((out == 0) | (out == 1))
    assert not torch.equal(out, (logits > 0).float())


def test_soft_eval_gate_returns_tempered_softmax():
    gate = GumbelSoftmaxGate(tau=2.0, hard=False, hard_eval=False).eval()
    logits = torch.randn(3, 5)
    torch.testing.assert_close(gate(logits), torch.softmax(logits / 2.0, -1))
    torch.testing.assert_close(gate(logits, tau=0.5), torch.softmax(logits / 0.5, -1))


def test_gates_have_no_parameters_or_buffers():
    for gate in (GumbelSoftmaxGate(), GumbelSigmoidGate()):
        assert list(gate.parameters()) == [] and list(gate.buffers()) == []


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_bad_temperature_raises_config_error(tau):
    with pytest.raises(ConfigError, match="tau"):
        gumbel_softmax(torch.randn(2, 3), tau)
    with pytest.raises(ConfigError, match="tau"):
        GumbelSigmoidGate(tau=tau)


def test_bad_threshold_raises_config_error():
    with pytest.raises(ConfigError, match="threshold"):
        gumbel_sigmoid(torch.randn(3), threshold=1.0)


def test_gumbel_sigmoid_noise_scale_shrinks_the_noise_to_the_inference_rule():
    logits = torch.linspace(-3, 3, 600)  # no logit at 0, where sigmoid rounds to exactly 0.5
    rule = (logits > 0).float()
    gen = torch.Generator().manual_seed(0)
    full = gumbel_sigmoid(logits, hard=True, generator=gen)
    small = gumbel_sigmoid(logits, hard=True, generator=torch.Generator().manual_seed(0), noise_scale=0.1)
    none = GumbelSigmoidGate(hard=True).train()(logits, noise_scale=0.0)
    assert torch.equal(none, rule)
    # the same draws, scaled: a tenth of the noise flips far fewer decisions than all of it
    assert (small != rule).sum() < (full != rule).sum() / 3
    with pytest.raises(ConfigError, match="noise_scale"):
        gumbel_sigmoid(logits, noise_scale=-0.5)
