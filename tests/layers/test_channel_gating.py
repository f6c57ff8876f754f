"""Channel gates (Gumbel, FBS) and the channel-gated conv pair: compact == masked, costs."""
import math

import pytest
import torch
import torch.nn.functional as F

from dynamicnets.errors import ConfigError
from dynamicnets.layers import (
    ChannelGatedConvPair,
    FBSGate,
    GumbelChannelGate,
    channel_gated_convs,
    pair_cost,
)
from dynamicnets.layers.channel_gated_conv import channel_cost, executed_channels
from dynamicnets.flops import counted_flops

IN, MID, OUT = 5, 8, 6
DT = torch.float64  # equality checks in double precision: only summation order differs


def make_pair(stride: int = 1, kernel_size: int = 3) -> ChannelGatedConvPair:
    """A pair in eval mode with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(0)
    pair = ChannelGatedConvPair(IN, MID, OUT, kernel_size, stride, dtype=DT)
    with torch.no_grad():
        pair.bn1.running_mean.normal_(0, 0.5)
        pair.bn1.running_var.uniform_(0.5, 2.0)
        pair.bn1.weight.normal_(1, 0.3)
        pair.bn1.bias.normal_(0, 0.3)
    return pair.eval()


def make_input(batch: int, seed: int = 1, size: int = 9) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, IN, size, size, generator=generator, dtype=DT)


def gumbel_gate(bias: float, min_keep: int = 1, **kw) -> GumbelChannelGate:
    torch.manual_seed(2)
    gate = GumbelChannelGate(IN, MID, min_keep=min_keep, bias_init=bias, dtype=DT, **kw)
    with torch.no_grad():
        gate.fc.weight.mul_(20.0)  # spread the logits so the samples keep different channels
    return gate


def both_executions(pair, x, decision):
    """`(masked, compact)` outputs of the pair for one gate decision."""
    masked = pair(x, decision.scale, "masked")
    compact = pair(x, decision.scale, "compact", decision.max_kept)
    return masked, compact


# ------------------------------------------------------------------ compact == masked


@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [30.0, 0.0, -30.0], ids=["all_kept", "mixed", "minimal"])
def test_gumbel_compact_equals_masked(batch, stride, bias):
    pair, gate = make_pair(stride), gumbel_gate(bias).eval()
    x = make_input(batch)
    with torch.no_grad():
        decision = gate(x)
        masked, compact = both_executions(pair, x, decision)
    counts = decision.keep.sum(dim=1)
    if bias > 0:
        assert (counts == MID).all()
    elif bias < 0:
        assert (counts == 1).all()  # min_keep
    elif batch > 1:
        assert counts.unique().numel() > 1  # variable counts: the padded path
    side = math.ceil(9 / stride)
    assert masked.shape == compact.shape == (batch, OUT, side, side)
    torch.testing.assert_close(compact, masked)


@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("density", [1.0, 0.5, 1 / MID], ids=["all_kept", "half", "minimal"])
def test_fbs_compact_equals_masked(batch, density):
    pair = make_pair(stride=2)
    torch.manual_seed(3)
    gate = FBSGate(IN, MID, density=density, dtype=DT).eval()
    x = make_input(batch)
    with torch.no_grad():
        decision = gate(x)
        masked, compact = both_executions(pair, x, decision)
    assert (decision.keep.sum(dim=1) == gate.k).all()
    torch.testing.assert_close(compact, masked)


def test_nothing_kept_gives_the_output_of_zero_middle_channels():
    pair, gate = make_pair(), gumbel_gate(-30.0, min_keep=0).eval()
    x = make_input(3)
    with torch.no_grad():
        decision = gate(x)
        masked, compact = both_executions(pair, x, decision)
        assert decision.keep.sum() == 0
        assert counted_flops(pair, x, decision.scale, "compact") == 0
    torch.testing.assert_close(compact, masked)
    assert (compact == 0).all()


def test_compact_handles_a_scale_without_a_fixed_count_and_with_max_kept():
    """Zero boosts inside a fixed-`k` decision are padding: the result is still exact."""
    pair, x = make_pair(), make_input(4)
    scale = torch.rand(4, MID, dtype=DT, generator=torch.Generator().manual_seed(0))
    scale[:, ::2] = 0  # 4 nonzero per sample
    scale[0, 1] = 0  # sample 0 keeps 3
    with torch.no_grad():
        masked = pair(x, scale, "masked")
        torch.testing.assert_close(pair(x, scale, "compact"), masked)
        torch.testing.assert_close(pair(x, scale, "compact", max_kept=5), masked)


def test_conv_biases_and_other_kernels_in_both_executions():
    torch.manual_seed(0)
    conv1 = torch.nn.Conv2d(IN, MID, 5, 2, 2, bias=True, dtype=DT)
    bn1 = torch.nn.BatchNorm2d(MID, affine=False, dtype=DT).eval()
    conv2 = torch.nn.Conv2d(MID, OUT, 1, bias=True, dtype=DT)
    x = make_input(3)
    mixed = (torch.rand(3, MID, generator=torch.Generator().manual_seed(1)) > 0.5).to(DT)
    for scale in (mixed, torch.zeros(3, MID, dtype=DT)):
        with torch.no_grad():
            masked = channel_gated_convs(x, conv1, bn1, conv2, scale, "masked")
            compact = channel_gated_convs(x, conv1, bn1, conv2, scale, "compact")
        torch.testing.assert_close(compact, masked)


# ---------------------------------------------------------------------------- costs


def test_per_sample_flops_equal_flop_counter_when_counts_are_equal():
    pair = make_pair(stride=2)
    gate = FBSGate(IN, MID, density=0.375, dtype=DT).eval()  # k = 3
    x = make_input(5)
    with torch.no_grad():
        decision = gate(x)
    for execution in ("masked", "compact"):
        ran, kept = pair.flops(9, 9, decision.scale, execution, decision.max_kept)
        counted = counted_flops(pair, x, decision.scale, execution, decision.max_kept)
        assert int(ran.sum()) == counted
        assert (ran == ran[0]).all() and ran.dtype == torch.float64
    per_channel = channel_cost(pair.conv1, pair.conv2, 9, 9)
    assert (kept == 3 * per_channel).all() and (ran == kept).all()  # compact ran: no padding
    full = counted_flops(lambda v: pair.conv2(pair.conv1(v)), x[:1])
    assert pair.flops(9, 9, decision.scale, "masked")[0][0] == full  # masked costs the full pair


def test_padded_overhead_is_reported_and_counted():
    pair, gate = make_pair(), gumbel_gate(0.0).eval()
    x = make_input(6)
    with torch.no_grad():
        decision = gate(x)
        counts = decision.keep.sum(dim=1).to(torch.float64)
        ran, kept = pair.flops(9, 9, decision.scale, "compact")
        assert int(ran.sum()) == counted_flops(pair, x, decision.scale, "compact")
        per_channel = channel_cost(pair.conv1, pair.conv2, 9, 9)
        assert torch.equal(ran - kept, (counts.max() - counts) * per_channel)
        assert (ran > kept).any()  # the overhead is real for this batch
        for b in range(6):  # run alone, a sample costs exactly what it keeps
            alone = decision.scale[b : b + 1]
            assert counted_flops(pair, x[b : b + 1], alone, "compact") == kept[b]


def test_executed_channels_follow_the_execution():
    scale = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    ran, kept = executed_channels(scale, "masked")
    assert ran.tolist() == [4, 4] and kept.tolist() == [2, 1]
    assert executed_channels(scale, "compact")[0].tolist() == [2, 2]
    assert executed_channels(scale, "compact", max_kept=3)[0].tolist() == [3, 3]


# ---------------------------------------------------------------------------- gates


def test_fbs_keeps_exactly_k_most_salient_channels_and_boosts_them():
    torch.manual_seed(0)
    gate = FBSGate(IN, 10, density=0.3, dtype=DT)
    assert gate.k == 3  # ceil(0.3 * 10), not 4 from rounding error
    assert FBSGate(IN, 10, density=0.31).k == 4
    x = make_input(7)
    decision = gate(x)
    assert (decision.keep.sum(dim=1) == 3).all() and decision.max_kept == 3
    saliency = torch.relu(gate.fc(x.abs().mean(dim=(2, 3))))
    torch.testing.assert_close(decision.scores, saliency)
    top = saliency.topk(3, dim=1).indices
    assert torch.equal(decision.keep.gather(1, top), torch.ones(7, 3, dtype=DT))
    torch.testing.assert_close(decision.scale, decision.keep * saliency)


def test_fbs_boost_is_applied_to_the_kept_channels():
    pair = make_pair()
    torch.manual_seed(0)
    gate = FBSGate(IN, MID, density=0.5, dtype=DT).eval()
    x = make_input(3)
    with torch.no_grad():
        decision = gate(x)
        expected = pair.conv2(F.relu(pair.bn1(pair.conv1(x))) * decision.scale[:, :, None, None])
        unboosted = pair(x, decision.keep, "compact", decision.max_kept)
        boosted = pair(x, decision.scale, "compact", decision.max_kept)
    torch.testing.assert_close(boosted, expected)
    assert (boosted - unboosted).abs().max() > 1e-3


def test_gumbel_training_decisions_are_hard_with_a_gradient():
    gate = gumbel_gate(0.0, min_keep=2).train()
    x = make_input(6)
    g1 = gate(x, generator=torch.Generator().manual_seed(5))
    g2 = gate(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(g1.keep, g2.keep)  # reproducible with a generator
    assert ((g1.keep == 0) | (g1.keep == 1)).all()
    assert (g1.keep.sum(dim=1) >= 2).all()
    assert g1.scale is g1.keep
    (g1.keep * torch.arange(MID, dtype=DT)).sum().backward()
    assert gate.fc.weight.grad.abs().sum() > 0


def test_gumbel_eval_decision_is_the_logit_sign_plus_min_keep():
    gate = gumbel_gate(-1.0, min_keep=1).eval()
    x = make_input(6)
    decision = gate(x)
    by_sign = (decision.scores > 0).to(DT)
    best = F.one_hot(decision.scores.argmax(dim=1), MID).to(DT)
    torch.testing.assert_close(decision.keep, torch.maximum(by_sign, best))
    assert torch.equal(gate(x).keep, decision.keep)  # deterministic


@pytest.mark.parametrize("kind", ["gumbel", "fbs"])
def test_aux_losses_have_gradients(kind):
    torch.manual_seed(0)
    if kind == "gumbel":
        gate = GumbelChannelGate(IN, MID, target_rate=0.25, dtype=DT).train()
    else:
        gate = FBSGate(IN, MID, dtype=DT).train()
    decision = gate(make_input(4))
    loss = gate.aux_loss(decision)
    assert loss.dim() == 0 and loss > 0
    loss.backward()
    assert gate.fc.weight.grad.abs().sum() > 0 and gate.fc.bias.grad.abs().sum() > 0
    if kind == "gumbel":  # the gradient lowers the keep rate toward the target
        assert gate.fc.bias.grad.sum() > 0


def test_gumbel_without_target_has_a_zero_aux_loss():
    gate = GumbelChannelGate(IN, MID)
    assert gate.aux_loss(gate(torch.randn(2, IN, 4, 4))) == 0


def test_masked_training_gives_every_parameter_a_gradient():
    torch.manual_seed(0)
    pair = ChannelGatedConvPair(IN, MID, OUT).train()
    gate = GumbelChannelGate(IN, MID, target_rate=0.5).train()
    x = torch.randn(4, IN, 6, 6)
    decision = gate(x)
    (pair(x, decision.scale).square().mean() + gate.aux_loss(decision)).backward()
    for name, p in [*pair.named_parameters(), *gate.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gate_flops_are_the_linear_layer():
    x = torch.randn(3, IN, 7, 7)
    for gate in (GumbelChannelGate(IN, MID).eval(), FBSGate(IN, MID)):
        assert gate.flops() == 2 * IN * MID
        assert counted_flops(gate, x) == 3 * gate.flops()


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: GumbelChannelGate(IN, MID, tau=0.0), "tau"),
        (lambda: GumbelChannelGate(IN, MID, min_keep=MID + 1), "min_keep"),
        (lambda: GumbelChannelGate(IN, MID, min_keep=-1), "min_keep"),
        (lambda: GumbelChannelGate(IN, MID, target_rate=1.5), "target_rate"),
        (lambda: GumbelChannelGate(0, MID), "in_chans"),
        (lambda: FBSGate(IN, MID, density=0.0), "density"),
        (lambda: FBSGate(IN, MID, density=1.2), "density"),
        (lambda: FBSGate(IN, 0), "out_chans"),
        (lambda: ChannelGatedConvPair(IN, 0, OUT), "mid_chans"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(build, key):
    with pytest.raises(ConfigError, match=key):
        build()


def test_bad_forward_arguments_raise_config_error():
    pair, x = make_pair(), make_input(2)
    scale = torch.ones(2, MID, dtype=DT)
    with pytest.raises(ConfigError, match="scale"):
        pair(x, scale[:, :-1])
    with pytest.raises(ConfigError, match="max_kept"):
        pair(x, scale, "compact", max_kept=MID + 1)
    with pytest.raises(ConfigError, match="execution"):
        pair(x, scale, "sliced")
    with pytest.raises(ConfigError, match="in_chans"):
        FBSGate(IN + 1, MID)(x)
    with pytest.raises(ConfigError, match="eval mode"):
        pair.train()(x, scale, "compact")
    bad_bn = torch.nn.BatchNorm2d(MID + 1)
    with pytest.raises(ConfigError, match="bn1.num_features"):
        channel_gated_convs(x, pair.conv1, bad_bn, pair.conv2, scale)


def test_functional_form_matches_the_module():
    pair, x = make_pair(), make_input(3)
    scale = (torch.arange(MID) % 3 == 0).to(DT).expand(3, -1)
    with torch.no_grad():
        direct = channel_gated_convs(x, pair.conv1, pair.bn1, pair.conv2, scale, "compact")
        torch.testing.assert_close(direct, pair(x, scale, "compact"))
    ran, _ = pair_cost(pair.conv1, pair.conv2, 9, 9, scale, "compact")
    assert (ran == 3 * channel_cost(pair.conv1, pair.conv2, 9, 9)).all()
