import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamicnets.errors import ConfigError
from dynamicnets.gates import ImprovedSemHash, improved_semhash, saturating_sigmoid, ste_threshold

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, threshold=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_ste_threshold_is_binary_with_identity_gradient(shape, threshold, seed):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    y = ste_threshold(x, threshold)
    assert torch.equal(y.detach(), (x > threshold).float())
    weights = torch.randn(shape)
    (y * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights)


def test_saturating_sigmoid_values():
    x = torch.tensor([-10.0, 0.0, 10.0])
    torch.testing.assert_close(saturating_sigmoid(x), torch.tensor([0.0, 0.5, 1.0]))
    big = torch.tensor([2.5, -2.5])  # 1.2*sigmoid(2.5) - 0.1 > 1: saturates exactly
    assert torch.equal(saturating_sigmoid(big), torch.tensor([1.0, 0.0]))


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31))
def test_semhash_eval_is_exact_bits(shape, seed):
    v = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    gate = ImprovedSemHash(noise_std=1.0).eval()
    out = gate(v)
    assert torch.equal(out, (v > 0).float())
    assert torch.equal(out, gate(v))


def test_semhash_training_mixes_hard_and_soft_per_sample():
    v = torch.randn(400, 8) * 0.3  # small log-odds: the soft values are rarely 0/1
    out = improved_semhash(v, noise_std=1.0, hard_prob=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.all((out >= 0) & (out <= 1))
    row_is_binary = ((out == 0) | (out == 1)).all(dim=1)
    frac_hard = row_is_binary.float().mean().item()
    assert 0.4 < frac_hard < 0.6
    # the hard rows are the bits of the same noisy value the soft rows come from
    out_all_hard = improved_semhash(v, 1.0, 1.0, generator=torch.Generator().manual_seed(0))
    out_all_soft = improved_semhash(v, 1.0, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.all((out_all_hard == 0) | (out_all_hard == 1))
    assert torch.equal(out_all_hard, (out_all_soft > 0.5).float())


def test_semhash_same_generator_repeats():
    v = torch.randn(64, 5)
    gate = ImprovedSemHash(noise_std=0.7)
    a = gate(v, torch.Generator().manual_seed(11))
    b = gate(v, torch.Generator().manual_seed(11))
    c = gate(v, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("hard_prob", [0.0, 0.5, 1.0])
def test_semhash_gradient_reaches_logits(hard_prob):
    v = (0.5 * torch.randn(32, 6)).requires_grad_()
    out = improved_semhash(v, 0.5, hard_prob, generator=torch.Generator().manual_seed(4))
    out.sum().backward()
    assert torch.all(v.grad >= 0)  # saturating sigmoid is non-decreasing
    assert v.grad.abs().sum() > 0


def test_semhash_without_noise_soft_value_is_saturating_sigmoid():
    v = torch.randn(10, 3)
    out = improved_semhash(v, noise_std=0.0, hard_prob=0.0)
    torch.testing.assert_close(out, saturating_sigmoid(v))


def test_semhash_bad_arguments():
    with pytest.raises(ConfigError, match="noise_std"):
        ImprovedSemHash(noise_std=-1.0)
    with pytest.raises(ConfigError, match="hard_prob"):
        improved_semhash(torch.randn(2, 2), hard_prob=1.5)
