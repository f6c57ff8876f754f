"""Conv experts and the sample-level conv MoE: per-sample reference, dense == sparse, drops,
aux losses, FLOPs against FlopCounterMode, argument errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError
from dynamicnets.layers.cond_conv import CondConv2d
from dynamicnets.layers.conv_experts import ConvExperts
from dynamicnets.layers.conv_moe import ConvMoE, expert_mask, sample_decisions
from dynamicnets.layers.moe import MoE, combine_weights, dense_moe, dispatch, kept_weights
from dynamicnets.gates.routers import Routing
from dynamicnets.flops import counted_flops

C_IN, C_OUT, E = 6, 10, 4
X_SHAPE = (C_IN, 9, 9)


def conv_moe(**kw) -> ConvMoE:
    """A strided conv MoE (C_in != C_out) whose router spreads samples over the experts."""
    torch.manual_seed(0)
    moe = ConvMoE(C_IN, C_OUT, 3, 2, **{"num_experts": E, **kw})
    with torch.no_grad():
        moe.router.gate.weight.normal_(0, 5.0)
    return moe


def inputs(batch: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *X_SHAPE, generator=torch.Generator().manual_seed(seed))


def reference(experts: ConvExperts, x: torch.Tensor, routing: Routing, kept=None) -> torch.Tensor:
    """Sample by sample, `sum_j w_bj conv(x_b, weight[e_bj])`, written out plainly
    (expert choice: expert by expert, sample by sample)."""
    def expert(e: int, b: int) -> torch.Tensor:
        return F.conv2d(x[b : b + 1], experts.weight[e], None, experts.stride, experts.padding)[0]

    out = torch.zeros(x.shape[0], *expert(0, 0).shape)
    if routing.expert_choice:
        for e in range(routing.num_experts):
            for b, w in zip(routing.expert_indices[e].tolist(), routing.expert_weights[e]):
                out[b] += w * expert(e, b)
        return out
    for b in range(x.shape[0]):
        for j in range(routing.expert_indices.shape[1]):
            if kept is None or kept[b, j]:
                e = int(routing.expert_indices[b, j])
                out[b] += routing.expert_weights[b, j] * expert(e, b)
    return out


def manual_routing(indices: list[list[int]], num_experts: int) -> Routing:
    idx = torch.tensor(indices)
    logits = torch.randn(idx.shape[0], num_experts, generator=torch.Generator().manual_seed(3))
    weights = torch.rand(idx.shape, generator=torch.Generator().manual_seed(4))
    return Routing(logits.softmax(-1), weights, idx, logits)


# ---------------------------------------------------------------- ConvExperts
def test_conv_experts_grouped_and_dense_equal_one_conv_per_expert():
    torch.manual_seed(0)
    experts = ConvExperts(E, C_IN, C_OUT, 3, 2, bias=True)
    x = inputs(7)
    counts = [2, 0, 4, 1]
    grouped = experts.forward_grouped(x, counts)
    starts = [0, 2, 2, 6]
    for e, (s, n) in enumerate(zip(starts, counts)):
        expected = F.conv2d(x[s : s + n], experts.weight[e], experts.bias[e], 2, 1)
        torch.testing.assert_close(grouped[s : s + n], expected)
    dense = experts.forward_dense(x)
    assert dense.shape == (E, 7, C_OUT, 5, 5)
    for e in range(E):
        torch.testing.assert_close(dense[e], experts.forward_expert(e, x), atol=1e-5, rtol=1e-5)
    assert experts.forward_grouped(x[:0], [0] * E).shape == (0, C_OUT, 5, 5)


def test_conv_experts_flops_match_the_flop_counter():
    experts = ConvExperts(E, C_IN, C_OUT, 3, 2)
    x = inputs(5)
    per_row = 2 * C_OUT * C_IN * 9 * 5 * 5
    assert experts.flops(1, 9, 9) == per_row
    assert counted_flops(experts.forward_grouped, x, [3, 0, 2, 0]) == experts.flops(5, 9, 9)
    assert counted_flops(experts.forward_dense, x) == experts.flops(5 * E, 9, 9)


# ---------------------------------------------------------------- ConvMoE
@pytest.mark.parametrize(
    "router,k", [("topk", 1), ("topk", 2), ("noisy_topk", 2), ("expert_choice", 2)]
)
def test_conv_moe_equals_a_per_sample_reference_loop(router, k):
    moe = conv_moe(router=router, k=k).eval()
    x = inputs()
    out = moe(x)
    routing = moe.route(x)
    assert out.output.shape == (8, C_OUT, 5, 5)
    torch.testing.assert_close(out.output, reference(moe.experts, x, routing), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe(x, "masked").output, out.output, atol=1e-5, rtol=1e-5)
    if router != "expert_choice":
        assert int(out.tokens_per_expert.sum()) == 8 * k  # B * k rows, not B * E
        assert (out.tokens_per_expert > 0).sum() >= 2  # the batch really is spread


def test_compact_equals_dense_with_zero_weights_for_unchosen_experts_and_same_gradients():
    moe = conv_moe(k=2).train()
    x = inputs()
    routing = moe.route(x)
    weights = combine_weights(routing)
    assert ((weights != 0).sum(1) == 2).all()  # zero for the two experts not chosen
    torch.testing.assert_close(kept_weights(dispatch(routing), 8), weights)
    compact = moe.run(x, routing, "compact").output
    torch.testing.assert_close(compact, dense_moe(moe.experts, x, weights), atol=1e-5, rtol=1e-5)

    grads = []
    for execution in ("compact", "masked"):
        moe.zero_grad()
        moe.run(x, moe.route(x), execution).output.square().sum().backward()
        grads.append([p.grad.clone() for p in moe.parameters()])
    for g_compact, g_masked in zip(*grads):
        torch.testing.assert_close(g_compact, g_masked, atol=1e-4, rtol=1e-4)


def test_soft_dense_fusion_equals_condconv_with_the_same_kernels():
    """Dense special case with all router probabilities: one conv with the mixed kernel."""
    moe = conv_moe().eval()
    cond = CondConv2d(C_IN, C_OUT, 3, 2, num_experts=E)
    cond.weight.data.copy_(moe.experts.weight.data)
    x = inputs()
    scores = moe.route(x).scores
    torch.testing.assert_close(
        dense_moe(moe.experts, x, scores), cond(x, scores), atol=1e-5, rtol=1e-5
    )


def test_capacity_drops_the_latest_samples_of_a_full_expert_and_dropless_keeps_all():
    moe = conv_moe(num_experts=2, capacity_factor=0.8, k=1)  # capacity ceil(0.8*5/2) = 2
    routing = manual_routing([[0], [0], [0], [1], [0]], 2)
    x = inputs(5)
    out = moe.run(x, routing, "compact")
    assert out.kept[:, 0].tolist() == [True, True, False, True, False]
    assert out.tokens_per_expert.tolist() == [2, 1]
    assert (out.output[2] == 0).all() and (out.output[4] == 0).all()
    torch.testing.assert_close(out.output, reference(moe.experts, x, routing, out.kept))
    masked = moe.run(x, routing, "masked").output
    torch.testing.assert_close(masked, out.output, atol=1e-5, rtol=1e-5)
    row = moe.experts.flops(1, 9, 9)
    assert out.token_flops.tolist() == [row, row, 0, row, 0]
    decisions = sample_decisions(out)
    assert decisions["expert_indices"][:, 0].tolist() == [0, 0, -1, 1, -1]
    assert decisions["experts"].sum(1).tolist() == [1, 1, 0, 1, 0]

    dropless = dispatch(routing, None)
    assert dropless.kept.all() and dropless.counts.tolist() == [4, 1]


def test_expert_mask_for_expert_choice_marks_the_chosen_samples():
    moe = conv_moe(router="expert_choice", k=1).eval()  # each expert takes ceil(8/4) = 2
    out = moe(inputs())
    mask = expert_mask(out)
    assert mask.sum(0).tolist() == [2] * E
    for e in range(E):
        chosen = out.routing.expert_indices[e].tolist()
        assert set(mask[:, e].nonzero().flatten().tolist()) == set(chosen)
    assert "expert_indices" not in sample_decisions(out)


@pytest.mark.parametrize("execution", ["compact", "masked"])
def test_aux_losses_have_gradients_reaching_the_router(execution):
    moe = conv_moe(k=2, load_balance_weight=0.5, z_loss_weight=0.1).train()
    x = inputs()
    for name in ("load_balance", "router_z"):
        moe.zero_grad()
        loss = moe(x, execution).aux_losses[name]
        assert loss.requires_grad
        loss.backward()
        assert moe.router.gate.weight.grad.abs().sum() > 0, name


@pytest.mark.parametrize("router", ["topk", "expert_choice"])
def test_per_sample_flops_equal_the_flop_counter(router):
    moe = conv_moe(router=router, k=2).eval()
    x = inputs()
    out = moe(x)
    assert int(out.token_flops.sum()) == out.flops == counted_flops(moe, x, "compact")
    masked = moe(x, "masked")
    assert int(masked.token_flops.sum()) == masked.flops == counted_flops(moe, x, "masked")
    router_row = 2 * C_IN * E
    rows = expert_mask(out).sum(1)
    expected = rows.double() * moe.experts.flops(1, 9, 9) + router_row
    assert torch.equal(out.token_flops, expected)
    if router == "topk":  # each sample alone, under its own slice of the routing
        r = out.routing
        for b in range(x.shape[0]):
            one = slice(b, b + 1)
            alone = Routing(r.scores[one], r.expert_weights[one], r.expert_indices[one], r.logits[one])
            ran = counted_flops(moe.run, x[b : b + 1], alone, "compact")
            assert ran + router_row == out.token_flops[b]
    else:
        assert rows.unique().numel() >= 2  # samples really cost different amounts


def test_the_token_moe_reports_per_token_flops_too():
    torch.manual_seed(0)
    moe = MoE(8, 12, E, k=2, capacity_factor=0.5).eval()
    x = torch.randn(10, 8)
    out = moe(x)
    assert out.token_flops.shape == (10,) and int(out.token_flops.sum()) == out.flops
    assert out.flops == counted_flops(moe, x)
    rows = out.kept.sum(1).double()
    torch.testing.assert_close(out.token_flops, rows * 4 * 8 * 12 + 2 * 8 * E)


def test_bad_arguments_raise_config_errors_naming_them():
    with pytest.raises(ConfigError, match="num_experts"):
        ConvExperts(0, C_IN, C_OUT)
    with pytest.raises(ConfigError, match="kernel_size"):
        ConvExperts(E, C_IN, C_OUT, kernel_size=0)
    with pytest.raises(ConfigError, match="padding"):
        ConvExperts(E, C_IN, C_OUT, padding=-1)
    with pytest.raises(ConfigError, match="counts"):
        ConvExperts(E, C_IN, C_OUT).forward_grouped(inputs(3), [1, 1, 0, 0])
    with pytest.raises(ConfigError, match="router must be"):
        ConvMoE(C_IN, C_OUT, router="hash")
    with pytest.raises(ConfigError, match="capacity_factor"):
        ConvMoE(C_IN, C_OUT, capacity_factor=0)
    with pytest.raises(ConfigError, match="capacity_factor"):
        ConvMoE(C_IN, C_OUT, router="expert_choice", capacity_factor=1.0)
    with pytest.raises(ConfigError, match="k=5 exceeds"):
        ConvMoE(C_IN, C_OUT, num_experts=4, k=5)
    moe = ConvMoE(C_IN, C_OUT)
    with pytest.raises(ConfigError, match=r"\(B, 6, H, W\)"):
        moe(torch.randn(2, 5, 9, 9))
    with pytest.raises(ConfigError, match="execution"):
        moe(inputs(2), "sparse")
    with pytest.raises(ConfigError, match="routing is for 3 samples"):
        moe.run(inputs(2), manual_routing([[0], [1], [2]], 4), "masked")
