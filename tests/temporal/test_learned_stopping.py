"""The halting distribution over checks and the inference rule of learned stopping."""
import math

import torch

from dynamicnets.gates.stop_distribution import first_stop, stop_distribution


def test_stop_distribution_is_the_probability_of_stopping_first_at_each_check():
    probs = torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 0.3], [0.2, 0.1, 0.9]], dtype=torch.float64)
    q = stop_distribution(probs)
    assert q.shape == (3, 4)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(q[0], torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64))
    torch.testing.assert_close(q[1], torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    expected = [0.2, 0.8 * 0.1, 0.8 * 0.9 * 0.9, 0.8 * 0.9 * 0.1]
    assert all(math.isclose(a, b) for a, b in zip(q[2].tolist(), expected))


def test_a_single_check_takes_everything():
    q = stop_distribution(torch.zeros(4, 0))
    assert torch.equal(q, torch.ones(4, 1))


def test_stop_distribution_passes_gradients_to_every_halting_probability():
    probs = torch.tensor([[0.3, 0.6]], requires_grad=True)
    (stop_distribution(probs) * torch.tensor([[0.0, 1.0, 2.0]])).sum().backward()
    assert (probs.grad != 0).all()


def test_first_stop_takes_the_first_check_over_its_threshold_or_the_last():
    probs = torch.tensor([[0.1, 0.9, 0.9], [0.6, 0.1, 0.1], [0.1, 0.1, 0.1], [0.1, 0.5, 0.7]])
    assert first_stop(probs, [0.5, 0.5, 0.5]).tolist() == [1, 0, 3, 2]  # strictly above: 0.5 does not stop
    assert first_stop(probs, [0.5, 0.95, 0.0]).tolist() == [2, 0, 2, 2]
    assert first_stop(probs, [0.5, 0.5, 0.5], last=1).tolist() == [1, 0, 1, 1]  # a cap at check 1
    assert first_stop(probs, [0.0, 0.0, 0.0], last=0).tolist() == [0, 0, 0, 0]
    assert first_stop(probs, [math.inf] * 3).tolist() == [3, 3, 3, 3]
