"""Networks of the user's own, and the mechanisms `dynamicnets.adapt` put into them, deploy
like the registered models: same logits, decisions and FLOPs as eager."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dynamicnets as dn
from dynamicnets import ConfigError
from dynamicnets.adapt.gating import GatedModel
from dynamicnets.deploy import DeployedModel, deployment_plan, export_model
from dynamicnets.inference import ExitPolicy
from dynamicnets.models.width.width_cascade import WidthCascade

from deploy_helpers import gate_policy_with_margin

SHAPE = (3, 16, 16)


class UserCNN(nn.Module):
    """A plain network with a forward of its own (not an nn.Sequential)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def plain_chain() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def inputs(count: int) -> torch.Tensor:
    return torch.randn(count, *SHAPE, generator=torch.Generator().manual_seed(1))


def test_a_users_own_network_is_one_static_graph(tmp_path):
    torch.manual_seed(0)
    model = UserCNN().eval()
    plan = deployment_plan(model, SHAPE)
    assert plan.kind == "static" and list(plan.graphs) == ["model"] and plan.model_name == "UserCNN"
    export_model(model, tmp_path, input_shape=SHAPE, format="torch.export")
    x = inputs(4)
    out = DeployedModel.load(tmp_path)(x)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x), rtol=1e-5, atol=1e-5)
    assert out.flops.tolist() == [float(dn.count_flops(model, SHAPE))] * 4
    with pytest.raises(ConfigError, match="returns plain logits: it takes no decision policy"):
        deployment_plan(model, SHAPE, policy=ExitPolicy("maxprob", []))


def test_swapped_dynamic_convolutions_deploy_with_their_routing_inside_the_graph(tmp_path):
    torch.manual_seed(0)
    model = dn.adapt.swap_convs(UserCNN(), kind="dyconv", num_experts=2).eval()
    export_model(model, tmp_path, input_shape=SHAPE, format="torch.export")
    x = inputs(4)
    with torch.no_grad():
        torch.testing.assert_close(DeployedModel.load(tmp_path)(x).logits, model(x), rtol=1e-5, atol=1e-5)


def test_a_slimmable_chain_deploys_one_graph_per_width(tmp_path):
    torch.manual_seed(0)
    chain = dn.adapt.make_slimmable(plain_chain(), input_shape=SHAPE, widths=(0.5, 1.0)).eval()
    plan = deployment_plan(chain)
    assert plan.kind == "width" and list(plan.graphs) == ["width0", "width1"]
    assert [g.flops for g in plan.graphs.values()] == [chain.flops(SHAPE, 0.5), chain.flops(SHAPE, 1.0)]
    export_model(chain, tmp_path, format="torch.export")
    deployed, x = DeployedModel.load(tmp_path), inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x).logits, chain(x).logits, rtol=1e-5, atol=1e-5)


def test_a_width_cascade_over_a_users_slimmable_chain_deploys_its_exits(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    chain = dn.adapt.make_slimmable(plain_chain(), input_shape=SHAPE, widths=(0.5, 1.0)).eval()
    cascade = WidthCascade(chain).eval()
    x = inputs(16)
    with torch.no_grad():
        confidence = cascade(x).exit_logits[0].softmax(1).amax(1)
    policy = ExitPolicy("maxprob", [float(confidence.median())])
    expected = dn.inference.run(cascade, x, policy)
    export_model(cascade, tmp_path, format="onnx", policy=policy)
    out = DeployedModel.load(tmp_path)(x)
    assert 0 < int((expected.exit_index == 0).sum()) < 16  # the rule splits the batch
    assert torch.equal(out.decisions["exit_index"], expected.exit_index)
    assert torch.equal(out.flops, expected.flops.to(out.flops.dtype))
    with pytest.raises(ConfigError, match="has no reset_classifier"):
        cascade.reset_classifier(3)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x))


class UserResNet(nn.Module):
    """A user's residual network with a forward of its own: stem, three residual blocks
    (the third after a strided transition), pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList([Residual(), Residual()])
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.last = Residual()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        h = self.last(torch.relu(self.down(h)))
        return self.fc(h.mean((2, 3)))


def gated_user_resnet() -> GatedModel:
    torch.manual_seed(0)
    net = UserResNet()
    gated = dn.adapt.gate_residual_blocks(net, input_shape=SHAPE, block_types=Residual).eval()
    with torch.no_grad():  # spread the gate logits so that some samples skip each block
        for block in gated._blocks:
            block.gate.fc2.weight.normal_(0, 3.0)
            block.gate.fc2.bias.zero_()
    return gated


@pytest.mark.parametrize("fmt", ["torch.export", "onnx"])
def test_a_gated_user_model_deploys_cut_at_its_gated_blocks(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    gated, x = gated_user_resnet(), inputs(32)
    plan = deployment_plan(gated, SHAPE)
    assert plan.kind == "gated" and plan.policy["thresholds"] == [0.0] * 3  # sigmoid(logit) > 0.5
    assert [step.get("run", step.get("block")) for step in plan.structure["steps"]] == [
        "segment0", "block0", "block1", "segment1", "block2"]
    fixed, gate_flops, blocks = gated.block_costs(SHAPE)
    graphs = plan.graphs
    assert graphs["segment0"].flops + graphs["segment1"].flops + graphs["head"].flops == fixed
    assert [graphs[f"block{i}"].flops for i in range(3)] == blocks.tolist()
    assert sum(graphs[f"gate{i}"].flops for i in range(3)) == gate_flops
    policy = gate_policy_with_margin(plan, x)
    export_model(gated, tmp_path, input_shape=SHAPE, format=fmt, policy=policy)
    out = DeployedModel.load(tmp_path)(x)
    with torch.no_grad():
        ref = gated(x, policy=policy)
    gates = ref.decisions["gates"]
    assert 0 < float(gates.mean()) < 1
    assert torch.equal(out.decisions["gates"], gates)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.flops, ref.flops.double())


def test_a_gated_block_reading_the_input_leaves_the_callers_tensor_alone():
    torch.manual_seed(0)

    class Direct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.fc = Residual3(), nn.Linear(3, 5)

        def forward(self, x):
            return self.fc(self.first(x).mean((2, 3)))

    gated = dn.adapt.gate_residual_blocks(Direct(), input_shape=SHAPE, block_types=Residual3).eval()
    x = inputs(16)
    plan = deployment_plan(gated, SHAPE)
    assert [step.get("run", step.get("block")) for step in plan.structure["steps"]] == ["block0"]
    policy = gate_policy_with_margin(plan, x)
    kept = x.clone()
    out = DeployedModel.from_plan(deployment_plan(gated, SHAPE, policy))(x)
    with torch.no_grad():
        ref = gated(x, policy=policy)
    assert 0 < float(ref.decisions["gates"].mean()) < 1
    assert torch.equal(x, kept)
    torch.testing.assert_close(out.logits, ref.logits)


class FlattensTheInput(nn.Module):
    """An MLP on images: its first gated block reads a view of the caller's input."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([DenseResidual(), DenseResidual()])
        self.head = nn.Linear(48, 5)

    def forward(self, x):
        h = torch.flatten(x, 1)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class DenseResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 48)

    def forward(self, x):
        return x + torch.relu(self.fc(x))


def test_the_callers_input_is_never_written_even_through_a_view():
    torch.manual_seed(0)
    gated = dn.adapt.gate_residual_blocks(FlattensTheInput(), input_shape=(3, 4, 4), block_types=DenseResidual,
                                          gate=lambda shape: nn.Sequential(nn.Linear(shape[0], 1), nn.Flatten(0))).eval()
    x = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    plan = deployment_plan(gated, (3, 4, 4))
    policy = gate_policy_with_margin(plan, x)
    deployed, kept = DeployedModel.from_plan(deployment_plan(gated, (3, 4, 4), policy)), x.clone()
    first = deployed(x)
    assert torch.equal(x, kept)
    assert 0 < float(first.decisions["gates"].mean()) < 1
    torch.testing.assert_close(deployed(x).logits, first.logits)


class WithDefaults(UserResNet):
    """Forward details a researcher writes: a keyword argument with a default, the batch size
    read once at the top, a learned temperature, an auxiliary head between two gated blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor(0.3))
        self.aux = nn.Conv2d(8, 8, 1)
        self.stem[0] = dn.adapt.swap_convs(nn.Sequential(self.stem[0]), kind="condconv", num_experts=2)[0]

    def forward(self, x, return_features=False):
        n = x.size(0)
        h = self.blocks[0](self.stem(x))
        self.first_features = h  # kept on the module: tracing must not leave a proxy here
        self.aux(h)  # computed and dropped: still run, still counted
        h = self.last(torch.relu(self.down(self.blocks[1](h))))
        if return_features:
            return h
        return self.fc(h.mean((2, 3)).view(n, -1)) / self.log_temperature.exp()


def test_a_forward_with_defaults_batch_size_parameters_and_dead_code_deploys_exactly():
    torch.manual_seed(0)
    gated = dn.adapt.gate_residual_blocks(WithDefaults(), input_shape=SHAPE, block_types=Residual).eval()
    x = inputs(32)
    plan = deployment_plan(gated, SHAPE)
    assert [step.get("run", step.get("block")) for step in plan.structure["steps"]] == [
        "segment0", "block0", "segment1", "block1", "segment2", "block2"]
    assert isinstance(gated.model.first_features, torch.Tensor)  # what a forward stored, not a tracing proxy
    policy = gate_policy_with_margin(plan, x)
    out = DeployedModel.from_plan(deployment_plan(gated, SHAPE, policy))(x)
    with torch.no_grad():
        ref = gated(x, policy=policy)
    assert 0 < float(ref.decisions["gates"].mean()) < 1
    assert torch.equal(out.decisions["gates"], ref.decisions["gates"])
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.flops, ref.flops.double())


class Residual3(Residual):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)


class ReusesTheStem(UserResNet):
    def forward(self, x):
        stem = self.stem(x)
        h = self.blocks[1](self.blocks[0](stem)) + stem  # a skip around two gated blocks
        return self.fc(self.last(h).mean((2, 3)))


class BranchesOnValues(UserResNet):
    def forward(self, x):
        h = self.blocks[0](self.stem(x))
        if h.shape[-1] > 8:  # Python control flow on a traced value
            h = self.blocks[1](h)
        return self.fc(self.last(h).mean((2, 3)))


class CallsOutOfOrder(UserResNet):
    def forward(self, x):
        h = self.blocks[0](self.blocks[1](self.stem(x)))
        return self.fc(self.last(h).mean((2, 3)))


@pytest.mark.parametrize("cls, message", [
    (ReusesTheStem, r"the value 'stem_2' computed before gated block 'blocks.0' is used after it \(by 'add'\)"),
    (BranchesOnValues, r"torch.fx cannot trace your network's forward"),
    (CallsOutOfOrder, r"calls gated block 'blocks.1' \(gate 1\) where gate 0 \('blocks.0'\) is due"),
])
def test_a_gated_user_forward_that_cannot_be_cut_is_refused_by_name(cls, message):
    net = cls()
    gated = dn.adapt.gate_residual_blocks(net, input_shape=SHAPE, block_types=Residual).eval()
    with pytest.raises(ConfigError, match=message):
        deployment_plan(gated, SHAPE)


class Reader(nn.Module):
    """A user's sequence model holding a Skip-RNN layer (a decision inside its own forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.fc = dn.layers.SkipLSTM(3, 8), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.rnn(x).hidden)


def test_a_users_network_holding_dynamic_layers_is_refused_by_the_layer():
    with pytest.raises(ConfigError, match=r"its layer 'rnn' \(SkipLSTM\) takes decisions inside your own forward"):
        deployment_plan(Reader(), (12, 3))
    moe = nn.Sequential(nn.Linear(3, 8), dn.adapt.MoEFeedForward(8, 16, num_experts=4, k=1), nn.Linear(8, 5))
    with pytest.raises(ConfigError, match=r"its layer '1' \(MoEFeedForward\)"):
        deployment_plan(moe, (3,))
