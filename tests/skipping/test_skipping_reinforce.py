"""REINFORCE for SkipNet (hybrid RL) and BlockDrop: the label-free surrogate gives exactly the
REINFORCE gradient, the sign is right, the baseline and the curriculum work."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from skipping_helpers import build, inputs

from dynamicnets.gates import cost_aware_reward, reinforce_loss
from dynamicnets.models.skipping import (
    accuracy_reward_surrogate,
    curriculum_blocks,
    loss_reward_surrogate,
)


def problem(batch: int = 6, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=g) * 2
    theta = torch.randn(batch, generator=g)
    y = torch.randint(classes, (batch,), generator=g)
    y[:2] = logits[:2].argmax(1)  # some right, some wrong predictions
    return logits, theta, y


def grads(logits, theta, loss_fn):
    logits = logits.clone().requires_grad_(True)
    theta = theta.clone().requires_grad_(True)
    loss_fn(logits, 3.0 * F.logsigmoid(theta)).backward()  # log_prob = a function of theta
    return logits.grad, theta.grad


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_reward_surrogate_gives_the_reinforce_gradient(smoothing):
    logits, theta, y = problem()
    extra = -0.3 * torch.arange(6.0) / 6
    baseline = torch.tensor(-1.2)

    def surrogate(z, log_prob):
        out, aux = loss_reward_surrogate(z, log_prob, extra, baseline)
        assert torch.equal(out, z)  # the values are the logits themselves
        return F.cross_entropy(out, y, label_smoothing=smoothing) + aux

    def exact(z, log_prob):
        task = F.cross_entropy(z, y, label_smoothing=smoothing, reduction="none")
        reward = -task.detach() + extra
        return task.mean() + reinforce_loss(log_prob, reward, baseline)

    for a, b in zip(grads(logits, theta, surrogate), grads(logits, theta, exact)):
        torch.testing.assert_close(a, b)


def test_accuracy_reward_surrogate_gives_the_reinforce_gradient():
    logits, theta, y = problem()
    kept = torch.linspace(0.2, 0.9, 6)

    def surrogate(z, log_prob):
        out, aux = accuracy_reward_surrogate(z, log_prob, 1 - kept**2, torch.full((6,), -2.0), 0.4)
        return F.cross_entropy(out, y) + aux

    def exact(z, log_prob):
        reward = cost_aware_reward(z.argmax(1) == y, kept, penalty=2.0, gamma=2.0)
        return F.cross_entropy(z, y) + reinforce_loss(log_prob, reward, 0.4)

    for a, b in zip(grads(logits, theta, surrogate), grads(logits, theta, exact)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("config", ["skipnet_rl", "blockdrop"])
def test_model_gradients_without_label_equal_those_with_the_label(config):
    """Under the Trainer (no label in forward) every parameter gets the same gradient as
    with the exact reward computed from the label."""
    model = build(config, gate_bias_init=0.0) if config != "blockdrop" else build(
        config, policy_bias_init=0.0)
    model.train()
    x, y = inputs(6), torch.tensor([0, 1, 2, 3, 4, 0])
    results = []
    for target in (None, y):
        m = copy.deepcopy(model)
        out = m(x, target=target, generator=torch.Generator().manual_seed(3))
        (F.cross_entropy(out.logits, y) + out.aux_loss()).backward()
        results.append({n: p.grad for n, p in m.named_parameters()})
    gated = [n for n in results[0] if "gate" in n or "policy" in n]
    assert gated
    for name, grad in results[0].items():
        torch.testing.assert_close(grad, results[1][name], rtol=1e-4, atol=1e-6, msg=name)


def policy_log_prob(model, x, actions):
    return -F.binary_cross_entropy_with_logits(model.policy_net(x), actions, reduction="sum")


@pytest.mark.parametrize("label,direction", [(0, 1.0), (1, -1.0)])
def test_blockdrop_reinforces_right_answers_and_discourages_wrong_ones(label, direction):
    model = build("blockdrop", policy_bias_init=0.0).train()
    with torch.no_grad():  # the classifier always says class 0
        model.backbone.head.fc.weight.zero_()
        model.backbone.head.fc.bias.copy_(torch.tensor([5.0, 0, 0, 0, 0]))
    x = inputs(8)
    out = model(x, generator=torch.Generator().manual_seed(0))
    actions = out.decisions["gates"]
    loss = F.cross_entropy(out.logits, torch.full((8,), label)) + out.aux_loss()
    params = list(model.policy_net.parameters())
    step = torch.autograd.grad(loss, params)
    before = policy_log_prob(model, x, actions)
    with torch.no_grad():
        for p, g in zip(params, step):
            p.sub_(0.05 * g)
    after = policy_log_prob(model, x, actions)
    assert direction * (after - before) > 0


@pytest.mark.parametrize("target", [False, True])
def test_skipnet_cost_penalty_pushes_gates_off(target):
    model = build("skipnet_rl", gate_bias_init=0.0, cost_weight=50.0).train()
    x, y = inputs(16), torch.arange(16) % 5
    out = model(x, generator=torch.Generator().manual_seed(0))
    model.update_baseline(out, y)  # baseline = this batch's mean reward
    assert torch.isclose(model.baseline(), model.reward(out, y).mean())
    out = model(x, target=y if target else None, generator=torch.Generator().manual_seed(0))
    (F.cross_entropy(out.logits, y) + out.aux_loss()).backward()
    bias_grad = torch.stack([g.fc.bias.grad for g in model.gates]).sum()
    assert bias_grad > 0  # gradient descent lowers the gate biases: fewer blocks run


def test_blockdrop_curriculum_decides_only_the_last_blocks():
    model = build("blockdrop", policy_bias_init=-5.0).train()  # the policy would drop all
    x = inputs(4)
    out = model(x, decide_last=2, generator=torch.Generator().manual_seed(0))
    gates = out.decisions["gates"]
    assert torch.equal(gates[:, :-2], torch.ones(4, model.num_gated_blocks - 2))
    out.aux_loss().backward()
    weight_grad = model.policy_net.fc.weight.grad
    assert torch.equal(weight_grad[:-2], torch.zeros_like(weight_grad[:-2]))  # forced: no signal
    assert weight_grad[-2:].abs().sum() > 0
    model.set_curriculum(1)
    with torch.no_grad():
        assert model.eval()(x).decisions["gates"][:, :-1].eq(1).all()
    assert [curriculum_blocks(e, 6, 2) for e in (0, 1, 2, 11, 20)] == [1, 1, 2, 6, 6]
