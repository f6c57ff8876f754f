"""MoE layer: equals a per-token reference loop, drops the right tokens, aux losses, FLOPs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError
from dynamicnets.layers.experts import MLPExperts
from dynamicnets.layers.moe import MoE, MoELayer, combine_weights, dense_moe, dispatch
from dynamicnets.gates.routers import Routing
from dynamicnets.flops import counted_flops

D, H, E = 8, 12, 4


def one_expert(experts: MLPExperts, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert `e` on a single token `(d,)`, written out plainly."""
    return F.gelu(x @ experts.w1[e] + experts.b1[e]) @ experts.w2[e] + experts.b2[e]


def reference(experts: MLPExperts, x: torch.Tensor, routing: Routing, kept=None) -> torch.Tensor:
    """Token by token (or, for expert choice, expert by expert, token by token)."""
    tokens = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(tokens)
    if routing.expert_choice:
        for e in range(routing.num_experts):
            for t, w in zip(routing.expert_indices[e].tolist(), routing.expert_weights[e]):
                out[t] += w * one_expert(experts, e, tokens[t])
        return out.view(x.shape)
    for t in range(tokens.shape[0]):
        for j in range(routing.expert_indices.shape[1]):
            if kept is None or kept[t, j]:
                e = int(routing.expert_indices[t, j])
                out[t] += routing.expert_weights[t, j] * one_expert(experts, e, tokens[t])
    return out.view(x.shape)


def manual_routing(indices: list[list[int]], num_experts: int) -> Routing:
    idx = torch.tensor(indices)
    t, k = idx.shape
    logits = torch.randn(t, num_experts, generator=torch.Generator().manual_seed(3))
    weights = torch.rand(t, k, generator=torch.Generator().manual_seed(4))
    return Routing(logits.softmax(-1), weights, idx, logits)


@pytest.mark.parametrize("router", ["topk", "noisy_topk", "expert_choice"])
def test_moe_equals_a_per_token_reference_loop(router):
    torch.manual_seed(0)
    moe = MoE(D, H, E, k=2, router=router).eval()
    x = torch.randn(3, 5, D)
    out = moe(x)
    routing = moe.router(x)
    assert out.output.shape == x.shape
    torch.testing.assert_close(out.output, reference(moe.experts, x, routing), atol=1e-5, rtol=1e-5)
    assert bool(out.kept.all())  # dropless


def test_moe_runs_only_the_routed_rows_and_reports_its_flops():
    torch.manual_seed(0)
    moe = MoE(D, H, E, k=2).eval()
    x = torch.randn(10, D)
    out = moe(x)
    assert int(out.tokens_per_expert.sum()) == 20  # T * k rows, not T * E
    assert out.flops == counted_flops(moe, x) == 4 * 20 * D * H + 2 * 10 * D * E


def test_sparse_dispatch_equals_the_dense_soft_fusion():
    torch.manual_seed(0)
    moe = MoE(D, H, E, k=2).eval()
    x = torch.randn(7, D)
    routing = moe.router(x)
    torch.testing.assert_close(
        moe.layer(x, routing).output, dense_moe(moe.experts, x, combine_weights(routing)), atol=1e-5, rtol=1e-5
    )
    ec = MoE(D, H, E, k=2, router="expert_choice").eval()
    routing = ec.router(x)
    torch.testing.assert_close(
        ec.layer(x, routing).output, dense_moe(ec.experts, x, combine_weights(routing)), atol=1e-5, rtol=1e-5
    )


def test_capacity_drops_the_latest_assignments_of_a_full_expert():
    torch.manual_seed(0)
    experts = MLPExperts(2, D, H)
    routing = manual_routing([[0], [0], [0], [1], [0]], 2)
    layer = MoELayer(experts, capacity_factor=0.8)  # capacity ceil(0.8 * 5 / 2) = 2
    x = torch.randn(5, D)
    out = layer(x, routing)
    assert out.kept[:, 0].tolist() == [True, True, False, True, False]
    assert out.tokens_per_expert.tolist() == [2, 1]
    assert (out.output[2] == 0).all() and (out.output[4] == 0).all()
    torch.testing.assert_close(out.output, reference(experts, x, routing, out.kept), atol=1e-5, rtol=1e-5)


def test_capacity_serves_first_choices_before_second_choices():
    torch.manual_seed(0)
    experts = MLPExperts(2, D, H)
    routing = manual_routing([[0, 1], [1, 0], [0, 1]], 2)
    layer = MoELayer(experts, capacity_factor=2 / 3)  # capacity ceil(2/3 * 3 * 2 / 2) = 2
    x = torch.randn(3, D)
    out = layer(x, routing)
    # expert 0: t0 (1st), t2 (1st) kept, t1 (2nd) dropped; expert 1: t1 (1st), t0 (2nd) kept
    assert out.kept.tolist() == [[True, True], [True, False], [True, False]]
    torch.testing.assert_close(out.output, reference(experts, x, routing, out.kept), atol=1e-5, rtol=1e-5)
    assert dispatch(routing, None).kept.all()  # dropless keeps everything


def test_aux_losses_have_gradients_reaching_the_router():
    torch.manual_seed(0)
    moe = MoE(D, H, E, k=2, load_balance_weight=0.5, z_loss_weight=0.1).train()
    x = torch.randn(16, D)
    out = moe(x)
    assert set(out.aux_losses) == {"load_balance", "router_z"}
    routing = moe.router(x)
    z = torch.logsumexp(routing.logits, -1).square().mean()
    torch.testing.assert_close(out.aux_losses["router_z"], 0.1 * z)
    for name in ("load_balance", "router_z"):
        moe.zero_grad()
        out = moe(x)
        out.aux_losses[name].backward()
        assert out.aux_losses[name].requires_grad
        assert moe.router.gate.weight.grad.abs().sum() > 0, name
    moe.zero_grad()
    moe(x).output.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moe.parameters())


def test_load_balance_loss_is_one_when_perfectly_balanced():
    experts = MLPExperts(2, D, H)
    logits = torch.zeros(4, 2)  # uniform scores
    routing = Routing(logits.softmax(-1), torch.ones(4, 1), torch.tensor([[0], [1], [0], [1]]), logits)
    out = MoELayer(experts, load_balance_weight=1.0, z_loss_weight=0.0)(torch.randn(4, D), routing)
    torch.testing.assert_close(out.aux_losses["load_balance"], torch.tensor(1.0))
    assert "router_z" not in out.aux_losses


def test_layer_checks_routing_and_input_agree():
    experts = MLPExperts(2, D, H)
    routing = manual_routing([[0], [1]], 2)
    with pytest.raises(ConfigError, match="2 tokens"):
        MoELayer(experts)(torch.randn(3, D), routing)
    with pytest.raises(ConfigError, match="capacity_factor"):
        MoELayer(experts, capacity_factor=0)
    with pytest.raises(ConfigError, match="router must be"):
        MoE(D, H, router="hash")
