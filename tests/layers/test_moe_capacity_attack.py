"""The MoE compute bound under adversarial routing (every token pushed to the same experts).

A token's cost is bounded by construction (its router row plus at most `k` expert rows);
what a crafted batch can inflate is one expert's load. With a `capacity_factor`, no
expert runs more than `capacity(T, k, E)` rows of a call, the rest are dropped to the
residual path (Switch Transformer), in both executions, and the reported FLOPs stay what
`FlopCounterMode` counts."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import create_model
from dynamicnets.flops import counted_flops
from dynamicnets.layers.experts import MLPExperts
from dynamicnets.layers.moe import MoELayer, capacity
from dynamicnets.gates.routers import TopKRouter

E = 4


def push(router_gate: torch.nn.Linear, k: int) -> torch.utils.hooks.RemovableHandle:
    """Router logits pushed towards experts `0..k-1` (in that order), whatever the input (the
    pushes are far apart, yet small enough that the softmax still orders every expert)."""
    bias = torch.zeros(router_gate.out_features)
    bias[:k] = torch.tensor([40.0 / (j + 1) for j in range(k)])
    return router_gate.register_forward_hook(lambda module, args, out: out + bias.to(out))


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("capacity_factor", [1.0, 0.5])
def test_one_expert_takes_at_most_its_capacity(k, capacity_factor):
    torch.manual_seed(0)
    router, experts = TopKRouter(8, E, k), MLPExperts(E, 8, 16)
    layer = MoELayer(experts, capacity_factor=capacity_factor)
    push(router.gate, k)
    x = torch.randn(12, 8)
    routing = router(x)
    assert (routing.expert_indices[:, 0] == 0).all()  # the attack routes every token to expert 0
    out = layer(x, routing)
    cap = capacity(12, k, E, capacity_factor)
    expected = torch.tensor([cap] * k + [0] * (E - k))
    assert torch.equal(out.tokens_per_expert, expected)
    assert int(out.kept.sum()) == k * cap
    # served in token order: the first `cap` tokens keep each pushed expert, the rest get nothing
    assert out.kept[:cap].all() and not out.kept[cap:].any()
    assert torch.equal(out.output[cap:], torch.zeros_like(out.output[cap:]))
    row = experts.flops(1)
    assert (out.token_flops <= k * row).all() and out.flops == k * cap * row
    assert counted_flops(layer, x, routing) == out.flops


def test_dropless_layer_bounds_a_token_by_k_rows():
    torch.manual_seed(0)
    router, experts = TopKRouter(8, E, 2), MLPExperts(E, 8, 16)
    layer = MoELayer(experts)  # no capacity: every row runs, the load is the whole batch
    push(router.gate, 2)
    out = layer(torch.randn(10, 8), router(torch.randn(10, 8)))
    assert out.tokens_per_expert.tolist() == [10, 10, 0, 0]
    assert (out.token_flops == 2 * experts.flops(1)).all()


@pytest.mark.parametrize("k", [1, 2])
def test_moe_vit_under_attack_keeps_its_capacity_and_its_honest_costs(k):
    torch.manual_seed(0)
    model = create_model("moe_vit_cifar", img_size=16, embed_dim=32, num_heads=2, depth=4, k=k,
                         capacity_factor=1.0).eval()
    for layer in model.moe_layers():
        push(layer.router.gate, k)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        compact = model(x)
        masked = model(x, execution="masked")
    indices = compact.decisions["expert_indices"]  # (B, L, tokens, k), -1 where dropped
    batch, layers, tokens, _ = indices.shape
    cap = capacity(batch * tokens, k, model.moe_layers()[0].experts.num_experts, 1.0)
    for layer in range(layers):
        load = torch.bincount(indices[:, layer][indices[:, layer] >= 0], minlength=E)
        assert load[:k].tolist() == [cap] * k and load[k:].sum() == 0
    assert (indices == -1).any()
    assert (compact.flops <= model.flops((3, 16, 16))).all()  # never more than k experts per token
    assert counted_flops(model, x) == int(compact.flops.sum())
    assert torch.equal(masked.decisions["expert_indices"], indices)
    torch.testing.assert_close(masked.logits, compact.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masked.decisions["compact_flops"], compact.flops)


def test_moe_resnet_under_attack_keeps_its_capacity_and_its_honest_costs():
    torch.manual_seed(0)
    model = create_model("moe_resnet_cifar", num_classes=5, capacity_factor=1.0).eval()
    for block in model.routed_blocks():
        push(block.moe.router.gate, 1)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        compact = model(x)
        masked = model(x, execution="masked")
    ran = compact.decisions["experts"]  # (B, L, E) bool
    cap = capacity(8, 1, E, 1.0)
    assert ran.sum(dim=0)[:, 0].tolist() == [cap] * ran.shape[1] and ran[:, :, 1:].sum() == 0
    assert counted_flops(model, x) == int(compact.flops.sum())
    torch.testing.assert_close(masked.logits, compact.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masked.decisions["compact_flops"], compact.flops)
