"""A compute cap on the gated blocks of a user's own model (`GatedModel(x, policy=...)`):
all gates on cannot exceed it, the capped compact FLOPs are what `FlopCounterMode` counts,
masked and compact agree, and a policy without a cap only moves the thresholds."""
import math

import pytest
import torch

import dynamicnets as dn
from dynamicnets.errors import ConfigError
from dynamicnets.gates import GatePolicy
from dynamicnets.inference import worst_case_flops

from adapt_helpers import Block, counted, make_resnet

SHAPE = (3, 16, 16)


def gated():
    net = dn.adapt.gate_residual_blocks(make_resnet(), input_shape=SHAPE, block_types=Block, reshaping="keep",
                                        gate="linear")
    for block in net._blocks:  # logits spread around zero: decisions differ between samples
        torch.nn.init.normal_(block.gate.fc.weight, std=5.0)
        torch.nn.init.zeros_(block.gate.fc.bias)
    return net.eval()


@pytest.mark.parametrize("batch", [1, 4])
def test_all_gates_on_cannot_exceed_the_cap(batch):
    net = gated()
    fixed, gate_flops, blocks = net.block_costs(SHAPE)
    cap = fixed + gate_flops + float(blocks[0]) + 1.0  # room for one gated block
    policy = GatePolicy.constant(-math.inf, net.num_gated_blocks, max_flops=cap)
    x = torch.randn(batch, *SHAPE)
    with torch.no_grad():
        uncapped = net(x, policy=GatePolicy.constant(-math.inf, net.num_gated_blocks))
        out, total = counted(net, x, policy=policy)
        masked = net(x, policy=policy, execution="masked")
    assert (uncapped.flops > cap).all() and (out.flops <= cap).all()
    assert out.decisions["gates"].tolist() == [[1.0, 0.0, 0.0]] * batch  # the first block to run fits
    assert out.decisions["forced_off"].tolist() == [[0.0, 1.0, 1.0]] * batch
    assert out.flops.sum().item() == total
    assert torch.equal(masked.decisions["gates"], out.decisions["gates"])
    assert torch.equal(masked.decisions["compact_flops"], out.flops)
    torch.testing.assert_close(masked.logits, out.logits)
    assert worst_case_flops(net, SHAPE, policy) == cap


def test_given_gates_are_capped_and_thresholds_replace_the_eval_rule():
    net = gated()
    x = torch.randn(6, *SHAPE)
    blocks = net.num_gated_blocks
    with torch.no_grad():
        default = net(x)
        same = net(x, policy=GatePolicy.constant(0.0, blocks))  # logit > 0 is sigmoid > 0.5
        given, total = counted(net, x, gates=torch.ones(6, blocks), policy=GatePolicy.constant(0.0, blocks, max_blocks=2))
    assert 0 < default.decisions["gates"].mean() < 1
    assert torch.equal(same.decisions["gates"], default.decisions["gates"]) and "forced_off" not in same.decisions
    assert given.decisions["gates"].tolist() == [[1.0, 1.0, 0.0]] * 6 and given.flops.sum().item() == total
    assert worst_case_flops(net, SHAPE) == net.full_flops(SHAPE)


def test_bad_caps_are_config_errors_naming_the_key():
    net = gated()
    fixed, gate_flops, _ = net.block_costs(SHAPE)
    x = torch.randn(2, *SHAPE)
    with pytest.raises(ConfigError, match="key 'max_flops'.*cheapest execution"):
        net(x, policy=GatePolicy.constant(0.0, net.num_gated_blocks, max_flops=fixed + gate_flops - 1))
    with pytest.raises(ConfigError, match="GatedModel: key 'max_density'"):
        net(x, policy=GatePolicy.constant(0.0, net.num_gated_blocks, max_density=0.5))
    with pytest.raises(ConfigError, match="2 thresholds"):
        net(x, policy=GatePolicy.constant(0.0, 2))
