"""Static networks (the anchors a dynamic model is timed against: CNNs, ResNets, ViT, LSTM/GRU
classifiers), deformable-convolution networks and dynamic-parameter networks (CondConv, DY-ReLU,
dynamic convolution) deploy as one graph: same logits and routing as eager."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.deploy import DeployedModel, deployment_plan, export_model
from dynamicnets.inference import ExitPolicy
from dynamicnets.models import create_model

SMALL = {
    "resnet20": {},
    "small_cnn": {"width": 4, "in_chans": 1},
    "vit_cifar": {"depth": 2, "embed_dim": 32, "num_heads": 2},
    "resnet20_condconv": {},
    "resnet20_dyrelu": {},
    "resnet20_dyconv": {},
    "deformable_resnet20": {},
    "lstm_classifier": {},
    "gru_classifier": {},
}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **SMALL[name]).eval()


def _inputs(model: torch.nn.Module, count: int) -> torch.Tensor:
    return torch.randn(count, *model.default_input_shape, generator=torch.Generator().manual_seed(1))


SLOW = ("resnet20_dyconv", "resnet20_dyrelu")  # 20-40 s of export each; CondConv covers the routed convs
# (for torch.export: ONNX refuses per-sample kernels, see the last test)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(SMALL)])
def test_a_network_without_decisions_between_graphs_is_one_graph(name, tmp_path):
    model = _model(name)
    plan = deployment_plan(model)
    assert plan.kind == "static" and list(plan.graphs) == ["model"]
    export_model(model, tmp_path, format="torch.export")
    deployed, x = DeployedModel.load(tmp_path), _inputs(model, 5)
    with torch.no_grad():
        ref = model(x)
    out = deployed(x)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.flops, ref.flops.to(out.flops.dtype))
    for key, value in ref.decisions.items():  # the routing of dynamic-parameter networks
        torch.testing.assert_close(out.decisions[key], value, rtol=1e-4, atol=1e-5)
    if name in ("resnet20_condconv", "resnet20_dyconv"):  # DY-ReLU routes no kernels
        assert out.decisions["routing"].shape[0] == 5


@pytest.mark.parametrize("name", ["resnet20", pytest.param("resnet20_dyrelu", marks=pytest.mark.slow)])
def test_one_graph_networks_run_in_onnxruntime_like_pytorch(name, tmp_path):
    pytest.importorskip("onnxruntime")
    model = _model(name)
    export_model(model, tmp_path, format="onnx")
    x = _inputs(model, 3)
    with torch.no_grad():
        ref = model(x).logits
    torch.testing.assert_close(DeployedModel.load(tmp_path)(x).logits, ref, rtol=1e-4, atol=1e-4)


def test_a_one_graph_network_refuses_a_policy_and_a_subclass_with_decisions_is_not_one_graph():
    with pytest.raises(ConfigError, match="one graph"):
        deployment_plan(_model("resnet20"), policy=ExitPolicy("maxprob", []))
    halting = create_model("avit_cifar", depth=4, embed_dim=32, num_heads=2).eval()  # a ViT with halting
    with pytest.raises(ConfigError, match="cannot be deployed yet"):
        deployment_plan(halting)


def test_onnx_refuses_per_sample_kernels_before_writing(tmp_path):
    model = create_model("resnet20_condconv", width=4).eval()
    with pytest.raises(ConfigError, match="export it with --format torch.export"):
        export_model(model, tmp_path / "x", format="onnx")
    assert not (tmp_path / "x").exists()
