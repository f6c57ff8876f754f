"""Routers: top-k, noisy top-k, expert choice; the `Routing` they return."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.gates.routers import ExpertChoiceRouter, NoisyTopKRouter, Routing, TopKRouter


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(0))


def test_topk_router_unpacks_like_megablocks(tokens):
    torch.manual_seed(0)
    router = TopKRouter(16, 5, k=2)
    routing = router(tokens)
    scores, weights, indices = routing
    assert scores.shape == (12, 5) and weights.shape == (12, 2) and indices.shape == (12, 2)
    torch.testing.assert_close(scores.sum(-1), torch.ones(12))
    torch.testing.assert_close(weights.sum(-1), torch.ones(12))
    assert torch.equal(indices, scores.topk(2, dim=-1).indices)
    torch.testing.assert_close(routing.logits.softmax(-1), scores)
    assert not routing.expert_choice and routing.num_experts == 5 and routing.num_tokens == 12


def test_topk_router_without_normalisation_keeps_the_probabilities(tokens):
    routing = TopKRouter(16, 5, k=1, normalize_weights=False)(tokens)
    torch.testing.assert_close(routing.expert_weights[:, 0], routing.scores.max(-1).values)


def test_noisy_router_adds_noise_only_while_training(tokens):
    torch.manual_seed(0)
    router = NoisyTopKRouter(16, 6, k=2).eval()
    clean = router(tokens)
    torch.testing.assert_close(clean.logits, router.gate(tokens.reshape(-1, 16)))
    top = clean.logits.topk(2, dim=-1)
    torch.testing.assert_close(clean.expert_weights, top.values.softmax(-1))
    router.train()
    a = router(tokens, generator=torch.Generator().manual_seed(1))
    b = router(tokens, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.logits, b.logits) and not torch.equal(a.logits, clean.logits)
    a.expert_weights.square().sum().backward()  # the noise scale is learned
    assert router.noise.weight.grad.abs().sum() > 0 and router.gate.weight.grad.abs().sum() > 0


def test_expert_choice_router_gives_each_expert_its_best_tokens(tokens):
    torch.manual_seed(0)
    router = ExpertChoiceRouter(16, 4, capacity_factor=2.0)
    routing = router(tokens)
    assert routing.expert_choice
    cap = router.capacity(12)
    assert cap == 6
    assert routing.expert_weights.shape == (4, cap) and routing.expert_indices.shape == (4, cap)
    for e in range(4):
        best = routing.scores[:, e].topk(cap).indices
        assert set(routing.expert_indices[e].tolist()) == set(best.tolist())
        torch.testing.assert_close(routing.expert_weights[e], routing.scores[routing.expert_indices[e], e])


def test_router_arguments_are_checked():
    with pytest.raises(ConfigError, match="k=3 exceeds"):
        TopKRouter(8, 2, k=3)
    with pytest.raises(ConfigError, match="d_model"):
        NoisyTopKRouter(0, 2)
    with pytest.raises(ConfigError, match="capacity_factor"):
        ExpertChoiceRouter(8, 2, capacity_factor=0)
    with pytest.raises(ConfigError, match="16 features"):
        TopKRouter(16, 4)(torch.randn(3, 8))


def test_routing_is_immutable():
    r = Routing(torch.zeros(1, 2), torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 2))
    with pytest.raises(AttributeError):
        r.scores = torch.ones(1, 2)
