"""Learned stopping: continuation costs, the optimal-stopping loss, the inference rule."""
import math

import torch

from dynamicnets.gates.learned_stopping import continuation_costs, first_stop, stopping_loss


def test_continuation_cost_is_the_expected_cost_of_reading_on():
    probs = torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 0.3], [0.2, 0.1, 0.9]], dtype=torch.float64)
    costs = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=torch.float64).expand(3, 4)
    values = continuation_costs(probs, costs)
    assert values.shape == (3, 4)
    assert torch.equal(values[:, -1], costs[:, -1])
    # V_0 is the cost averaged over where the sample stops: q = (0.5, 0.25, 0.125, 0.125) for row 0
    assert math.isclose(float(values[0, 0]), 0.5 * 4 + 0.25 * 3 + 0.125 * 2 + 0.125 * 1)
    assert math.isclose(float(values[1, 0]), 3.0)  # never at check 0, always at check 1
    q = [0.2, 0.8 * 0.1, 0.8 * 0.9 * 0.9, 0.8 * 0.9 * 0.1]
    assert math.isclose(float(values[2, 0]), sum(p * c for p, c in zip(q, [4.0, 3.0, 2.0, 1.0])))


def test_a_single_check_costs_its_own_cost():
    costs = torch.tensor([[2.5], [1.0]])
    assert torch.equal(continuation_costs(torch.zeros(2, 0), costs), costs)


def test_each_halting_probability_compares_stopping_with_reading_on():
    probs = torch.tensor([[0.99, 0.5, 0.5]], requires_grad=True)
    costs = torch.tensor([[5.0, 1.0, 3.0, 0.0]])
    stopping_loss(probs, costs).backward()
    values = continuation_costs(probs.detach(), costs)
    # d/d lambda_k = c_k - V_{k+1}, not scaled by the 1% chance of still reading at check 1
    torch.testing.assert_close(probs.grad[0], (costs[0, :3] - values[0, 1:]) / 3)
    assert probs.grad[0, 0] > 0 and probs.grad[0, 1] < 0 and probs.grad[0, 2] > 0


def test_first_stop_takes_the_first_check_over_its_threshold_or_the_last():
    probs = torch.tensor([[0.1, 0.9, 0.9], [0.6, 0.1, 0.1], [0.1, 0.1, 0.1], [0.1, 0.5, 0.7]])
    assert first_stop(probs, [0.5, 0.5, 0.5]).tolist() == [1, 0, 3, 2]  # strictly above: 0.5 does not stop
    assert first_stop(probs, [0.5, 0.95, 0.0]).tolist() == [2, 0, 2, 2]
    assert first_stop(probs, [0.5, 0.5, 0.5], last=1).tolist() == [1, 0, 1, 1]  # a cap at check 1
    assert first_stop(probs, [0.0, 0.0, 0.0], last=0).tolist() == [0, 0, 0, 0]
    assert first_stop(probs, [math.inf] * 3).tolist() == [3, 3, 3, 3]
