"""Gates on the residual blocks of a user's own model: compact == masked, honest FLOPs."""
import pytest
import torch

import dynamicnets as dn
from dynamicnets.errors import ConfigError

from adapt_helpers import Block, counted, make_resnet

SHAPE = (3, 16, 16)


def gated(**kwargs):
    model = make_resnet()
    kwargs.setdefault("block_types", Block)
    kwargs.setdefault("reshaping", "keep")
    return dn.adapt.gate_residual_blocks(model, input_shape=SHAPE, **kwargs).eval()


def test_only_shape_preserving_blocks_are_gated():
    net = gated()
    assert net.gated_paths == ("layer1.0", "layer1.1", "layer2.1")
    assert isinstance(net.model.layer1[0], dn.adapt.GatedBlock)
    assert isinstance(net.model.layer2[0], Block)  # the downsampling block stays as it was


def test_reshaping_block_is_refused_by_path():
    with pytest.raises(ConfigError, match=r"block 'layer2\.0' \(Block\) maps per-sample shape \(8, 16, 16\) to \(16, 8, 8\)"):
        dn.adapt.gate_residual_blocks(make_resnet(), input_shape=SHAPE, block_types=Block)
    with pytest.raises(ConfigError, match="no submodule 'layer9'"):
        dn.adapt.gate_residual_blocks(make_resnet(), input_shape=SHAPE, paths=["layer9"])
    with pytest.raises(ConfigError, match="exactly one of"):
        dn.adapt.gate_residual_blocks(make_resnet(), input_shape=SHAPE)


@pytest.mark.parametrize("seed", [0, 1])
def test_compact_equals_masked_for_the_same_decisions(seed):
    net = gated()
    torch.manual_seed(seed)
    x = torch.randn(6, *SHAPE)
    gates = (torch.rand(6, net.num_gated_blocks) > 0.5).float()
    gates[0] = 0  # a sample that skips everything
    gates[1] = 1  # and one that runs everything
    with torch.no_grad():
        masked = net(x, gates=gates, execution="masked")
        compact = net(x, gates=gates, execution="compact")
        own_masked = net(x, execution="masked")
        own_compact = net(x)
    torch.testing.assert_close(compact.logits, masked.logits)
    torch.testing.assert_close(own_compact.logits, own_masked.logits)
    assert torch.equal(own_compact.decisions["gates"], own_masked.decisions["gates"])
    assert torch.equal(compact.flops, masked.decisions["compact_flops"])


def test_compact_flops_are_what_flop_counter_counts():
    net = gated(gate="linear")
    # gate logits spread around zero, so the eval decisions differ between samples and blocks
    for block in net._blocks:
        torch.nn.init.normal_(block.gate.fc.weight, std=5.0)
        torch.nn.init.zeros_(block.gate.fc.bias)
    x = torch.randn(8, *SHAPE)
    with torch.no_grad():
        net(x)  # costs measured (outside the counters below either way)
        out, total = counted(net, x)
        gates = out.decisions["gates"]
        assert 0 < gates.mean() < 1
        assert out.flops.sum().item() == total
        for b in range(3):
            single, flops = counted(net, x[b : b + 1])
            assert single.flops.item() == flops == out.flops[b].item()
        forced, total = counted(net, x, gates=gates)  # forced decisions: no gate networks ran
        assert forced.flops.sum().item() == total


def test_masked_training_reports_full_cost_and_trains():
    net = gated().train()
    x, y = torch.randn(4, *SHAPE), torch.randint(0, 10, (4,))
    out, total = counted(net, x, generator=torch.Generator().manual_seed(0))
    assert out.flops.tolist() == [total / 4] * 4 == [net.full_flops(SHAPE)] * 4
    loss = torch.nn.functional.cross_entropy(out.logits, y) + out.aux_loss()
    loss.backward()
    assert "target_rate" in out.aux_losses
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


def test_user_model_called_directly_still_runs():
    net = gated()
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(net.model(x), net(x).logits)


def test_custom_gate_factory_and_compact_needs_hard_gates():
    made = []

    def factory(shape):
        made.append(shape)
        return dn.gates.block_gates.PooledLinearGate(shape[0])

    net = gated(gate=factory)
    assert made == [(8, 16, 16), (8, 16, 16), (16, 8, 8)]
    with pytest.raises(ConfigError, match="hard gates"):
        net(torch.randn(2, *SHAPE), gates=torch.full((2, 3), 0.5))


def test_the_masked_path_exports_and_the_user_model_counts_like_the_wrapper():
    net = gated()
    x = torch.randn(2, *SHAPE)
    program = torch.export.export(net, (x,), kwargs={"execution": "masked"})
    exported, eager = program.module()(x, execution="masked"), net(x, execution="masked")
    torch.testing.assert_close(exported.logits, eager.logits)
    assert torch.equal(exported.flops, eager.flops)
    # the user's own model, holding the gated blocks, in eval: every gated block counted masked
    assert dn.count_flops(net.model, SHAPE) == net.full_flops(SHAPE) == dn.count_flops(net, SHAPE)


def test_model_changed_forgets_the_measured_costs():
    net = gated()
    full = net.full_flops(SHAPE)
    head = net.model.head[-1]
    net.model.head[-1] = torch.nn.Linear(head.in_features, 1000)
    assert net.full_flops(SHAPE) == full  # measured once per shape
    net.model_changed()
    assert net.full_flops(SHAPE) == full + 2 * head.in_features * (1000 - head.out_features)


def test_gates_calibrate_to_an_execution_rate():
    net = gated(gate="linear")
    for block in net._blocks:  # logits spread around zero, as after training
        torch.nn.init.normal_(block.gate.fc.weight, std=5.0)
    torch.manual_seed(1)
    calibration, fresh = torch.randn(200, *SHAPE), torch.randn(200, *SHAPE)
    policy = dn.inference.calibrate_gate_policy(net, calibration, rate=0.5)
    with torch.no_grad():
        on_calibration = net(calibration, policy=policy).decisions["gates"].mean(0)
        on_fresh = net(fresh, policy=policy).decisions["gates"].mean(0)
    torch.testing.assert_close(on_calibration, torch.full_like(on_calibration, 0.5), atol=0.01, rtol=0)
    assert ((on_fresh - 0.5).abs() < 0.15).all()
    net.decide.threshold = 0.7
    with pytest.raises(ConfigError, match="logit > 0"):
        dn.inference.calibrate_gate_policy(net, calibration, rate=0.5)


def test_a_user_model_holding_a_recurrent_layer_gates_and_counts_in_eval():
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return x + torch.relu(self.conv(x))

    class Net(torch.nn.Module):  # conv features read row by row by a Skip-RNN
        def __init__(self):
            super().__init__()
            self.stem, self.block = torch.nn.Conv2d(3, 8, 3, padding=1), Residual()
            self.rnn, self.fc = dn.layers.SkipLSTM(8, 8), torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.rnn(self.block(self.stem(x)).flatten(2).transpose(1, 2)).hidden)

    torch.manual_seed(0)
    net = dn.adapt.gate_residual_blocks(Net().eval(), input_shape=(3, 8, 8), block_types=Residual).eval()
    out = net(torch.randn(2, 3, 8, 8))  # costs measured on meta tensors: the recurrent layer runs masked there
    assert out.logits.shape == (2, 4) and out.decisions["gates"].shape == (2, 1)
    assert dn.count_flops(net, (3, 8, 8)) == net.full_flops((3, 8, 8))
