"""Self-distillation of the exits from the final exit."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, DynamicOutput
from dynamicnets.training.distillation import exit_distillation_loss


def test_zero_when_every_exit_equals_the_final_one():
    final = torch.randn(5, 7)
    out = DynamicOutput(logits=final, exit_logits=[final.clone(), final.clone(), final])
    assert exit_distillation_loss(out, temperature=2.0).abs() < 1e-6
    single = DynamicOutput(logits=final)
    assert exit_distillation_loss(single) == 0


def test_value_matches_kl_of_softened_probabilities():
    torch.manual_seed(0)
    a, b, final = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    t, w = 2.5, 0.3
    out = DynamicOutput(logits=final, exit_logits=[a, b, final])

    def kl(student):
        p = F.softmax(final / t, -1)
        return (p * (p.log() - F.log_softmax(student / t, -1))).sum(-1).mean()

    expected = w * t**2 * (kl(a) + kl(b)) / 2
    assert math.isclose(exit_distillation_loss(out, t, w).item(), expected.item(), rel_tol=1e-5)
    assert exit_distillation_loss(out, t, w).item() > 0


def test_gradient_reaches_students_but_not_the_teacher():
    torch.manual_seed(0)
    trunk = torch.randn(4, 6, requires_grad=True)
    head_early = torch.randn(6, 5, requires_grad=True)
    head_final = torch.randn(6, 5, requires_grad=True)
    early, final = trunk @ head_early, (trunk * 2) @ head_final
    out = DynamicOutput(logits=final, exit_logits=[early, final])
    exit_distillation_loss(out).backward()
    assert head_early.grad is not None and head_early.grad.abs().sum() > 0
    assert head_final.grad is None  # the teacher is detached
    assert trunk.grad is not None  # reached through the student only


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"weight": -1.0}])
def test_bad_arguments(kwargs):
    final = torch.randn(2, 3)
    with pytest.raises(ConfigError):
        exit_distillation_loss(DynamicOutput(logits=final, exit_logits=[final, final]), **kwargs)
