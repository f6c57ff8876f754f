import math

import pytest
import torch

from dynamicnets.training import build_scheduler, lr_factor


def test_warmup_rises_linearly_then_cosine_falls_to_zero():
    total, warm = 20, 4
    factors = [lr_factor(s, total, warm, "cosine") for s in range(total + 1)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[12] == pytest.approx(0.5)  # half-way through the cosine part
    assert factors[total] == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_after_warmup():
    assert [lr_factor(s, 10, 2, "constant") for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_scheduler_sets_the_lr_of_each_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=0, schedule="cosine")
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)])
    state = sched.state_dict()
    assert state["last_epoch"] == 10 and state["lr_lambdas"] == [None]
