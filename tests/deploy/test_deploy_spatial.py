"""Deploying the spatial models: a spatial transformer classifier is one static graph
(affine grid + bilinear sampling inside it) and runs under onnxruntime like PyTorch; glance
and focus deploys as a multi-exit model (the greedy patch policy and the crop inside each
step's graph); dynamic resolution as a predictor graph and one graph per resolution (the
resize inside), the runtime grouping the batch by the policy's choice."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.deploy import DeployedModel, deployment_plan, export_model
from dynamicnets.inference import ExitPolicy, run_early_exit
from dynamicnets.inference.resolution_policy import ResolutionPolicy
from dynamicnets.models import create_model

from deploy_helpers import exit_policy_with_margin

STN_SMALL = {"canvas": 20, "glimpse": 12, "width": 4, "loc_pool": 10}
GLANCE_SMALL = {"num_classes": 5, "image_size": 20, "glance_size": 10, "patch_size": 8, "grid": 4, "steps": 3,
                "width": 4, "hidden": 16, "policy_hidden": 8}


def canvases(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 1, 20, 20, generator=torch.Generator().manual_seed(seed))


def stn_model() -> torch.nn.Module:
    """`stn_cnn` whose transform depends on the input (the regressor starts at zero weight)."""
    torch.manual_seed(0)
    model = create_model("stn_cnn", **STN_SMALL).eval()
    with torch.no_grad():
        model.transformer.regressor.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return model


def glance_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("glance_focus_cnn", **GLANCE_SMALL)
    with torch.no_grad():  # BN statistics of a few batches, so samples differ in eval
        model.train()(canvases(16, 9))
        model.policy[-1].weight.mul_(50.0)  # clear argmax margins: no rounding picks another patch
    return model.eval()


def assert_stn_runs_like_eager(deployed: DeployedModel, model: torch.nn.Module, x: torch.Tensor) -> None:
    out = deployed(x)
    with torch.no_grad():
        ref = model(x)
    assert set(out.decisions) == {"theta"}
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.decisions["theta"], ref.decisions["theta"], rtol=1e-4, atol=1e-5)
    assert out.flops.tolist() == ref.flops.double().tolist()


def test_stn_is_one_static_graph_that_runs_like_the_model():
    model, x = stn_model(), canvases(6, 2)
    plan = deployment_plan(model)
    assert plan.kind == "static" and plan.model_name == "stn_cnn" and list(plan.graphs) == ["model"]
    assert plan.structure == {"graph": "model", "decisions": ["theta"]}
    assert plan.graphs["model"].flops == model.flops((1, 20, 20))
    deployed = DeployedModel.from_plan(plan)
    for batch in (x, x[:1]):
        assert_stn_runs_like_eager(deployed, model, batch)
    with pytest.raises(ConfigError, match="no decision policy"):
        deployment_plan(model, policy=object())


@pytest.mark.slow
def test_stn_exported_to_onnx_runs_in_onnxruntime_like_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    model, x = stn_model(), canvases(7, 3)
    export_model(model, tmp_path, format="onnx")
    deployed = DeployedModel.load(tmp_path)
    assert deployed.backend == "onnxruntime" and deployed.kind == "static"
    for batch in (x, x[:1]):
        assert_stn_runs_like_eager(deployed, model, batch)


def resolution_model_and_inputs():
    """A small dynamic-resolution network (8/12/16 on 16x16 inputs) whose predictor spreads the
    inputs over the three resolutions, and those inputs whose top two scores are 0.5 apart
    (no rounding of any engine can change their choice)."""
    torch.manual_seed(0)
    model = create_model("dynamic_resolution_resnet", depth=8, width=4, resolutions=(8, 12, 16)).eval()
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        model.predictor.fc.weight.mul_(20.0)
        model.predictor.fc.bias -= model.resolution_logits(x).mean(dim=0)
        top2 = model.resolution_logits(x).topk(2, dim=-1).values
    return model, x[(top2[:, 0] - top2[:, 1]) > 0.5]


def assert_resolution_runs_like_eager(deployed, model, x, policy=None):
    out = deployed(x) if policy is None else deployed(x, policy=policy)
    with torch.no_grad():
        ref = model(x, policy=policy)
    for key in ("resolution_index", "resolution"):
        assert torch.equal(out.decisions[key], ref.decisions[key])
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-4)
    assert out.flops.tolist() == ref.flops.double().tolist()


def test_dynamic_resolution_plan_groups_the_batch_like_compact_execution():
    model, x = resolution_model_and_inputs()
    assert len(x) >= 12 and len(model(x).decisions["resolution_index"].unique()) == 3  # every resolution taken
    costs = model.resolution_costs((3, 16, 16))
    plan = deployment_plan(model, policy=ResolutionPolicy(max_flops=costs[1]))
    assert plan.kind == "resolution" and plan.model_name == "dynamic_resolution_resnet"
    assert list(plan.graphs) == ["predictor", "resolution0", "resolution1", "resolution2"]
    assert [plan.graphs["predictor"].flops + plan.graphs[f"resolution{i}"].flops for i in range(3)] == costs
    deployed = DeployedModel.from_plan(plan)
    capped = ResolutionPolicy(max_flops=costs[1])
    for batch in (x, x[:1]):
        assert_resolution_runs_like_eager(deployed, model, batch, capped)  # the exported policy
        assert_resolution_runs_like_eager(deployed, model, batch, ResolutionPolicy())  # another one
    assert deployed(x).decisions["resolution_capped"].any()
    every_small = ResolutionPolicy(bias=(100.0, 0.0, 0.0))  # the whole batch in one group
    assert deployed(x, policy=every_small).decisions["resolution_index"].tolist() == [0] * len(x)
    assert_resolution_runs_like_eager(deployed, model, x, every_small)


def test_dynamic_resolution_policy_errors_name_the_model():
    model, x = resolution_model_and_inputs()
    with pytest.raises(ConfigError, match="'dynamic_resolution_resnet'.*ResolutionPolicy"):
        deployment_plan(model, policy=ExitPolicy("maxprob", [0.5]))
    with pytest.raises(ConfigError, match="max_flops"):
        deployment_plan(model, policy=ResolutionPolicy(max_flops=1000))
    deployed = DeployedModel.from_plan(deployment_plan(model))
    with pytest.raises(ConfigError, match="'dynamic_resolution_resnet' picks resolutions"):
        deployed(x, policy=ExitPolicy("maxprob", [0.5]))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch.export", "onnx"])
def test_dynamic_resolution_exported_runs_like_compact_execution(fmt, tmp_path):
    model, x = resolution_model_and_inputs()
    export_model(model, tmp_path, format=fmt)
    deployed = DeployedModel.load(tmp_path)
    for batch in (x, x[:1]):
        assert_resolution_runs_like_eager(deployed, model, batch)


def test_glance_focus_plan_decides_like_the_compact_executor():
    model, x = glance_model(), canvases(24, 4)
    policy = exit_policy_with_margin(model, x)
    ref = run_early_exit(model, x, policy)
    assert len(ref.exit_index.unique()) == model.num_exits  # every exit taken by some sample
    plan = deployment_plan(model, policy=policy)
    assert plan.kind == "early_exit" and plan.model_name == "glance_focus_cnn"
    deployed = DeployedModel.from_plan(plan)
    for batch in (x, x[:1]):
        out, want = deployed(batch), run_early_exit(model, batch, policy)
        assert torch.equal(out.decisions["exit_index"], want.exit_index)
        torch.testing.assert_close(out.logits, want.logits)
        torch.testing.assert_close(out.flops, want.flops.double())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch.export", "onnx"])
def test_glance_focus_exported_runs_like_the_compact_executor(fmt, tmp_path):
    model, x = glance_model(), canvases(24, 4)
    policy = exit_policy_with_margin(model, x)
    export_model(model, tmp_path, format=fmt, policy=policy)
    deployed = DeployedModel.load(tmp_path)
    for batch in (x, x[:1]):
        out, want = deployed(batch), run_early_exit(model, batch, policy)
        assert torch.equal(out.decisions["exit_index"], want.exit_index)
        torch.testing.assert_close(out.logits, want.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_stn_exported_with_torch_export_runs_like_the_model(tmp_path):
    model, x = stn_model(), canvases(5, 5)
    export_model(model, tmp_path, format="torch.export")
    assert_stn_runs_like_eager(DeployedModel.load(tmp_path), model, x)
