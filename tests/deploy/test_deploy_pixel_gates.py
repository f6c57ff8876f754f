"""Pixel-level spatial models (DynConv, SACT) deploy as their masked execution: one graph that
runs the gates and every position, with the logits and position masks of compact inference,
the dense cost as its FLOPs and the compact cost it skipped as a decision."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.deploy import DeployedModel, deployment_plan, export_model
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.inference import ExitPolicy
from dynamicnets.models import create_model


def dynconv() -> torch.nn.Module:
    """`dynconv_resnet20` whose gates switch about half the positions on."""
    torch.manual_seed(0)
    model = create_model("dynconv_resnet20").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for gate in model.gates:
            gate.conv.weight.copy_(torch.randn(gate.conv.weight.shape, generator=generator))
            gate.conv.bias.zero_()
    return model


def images(count: int = 5) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fmt", ["torch.export", "onnx"])
def test_dynconv_deploys_its_masked_execution_with_the_compact_decisions(fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    model, x = dynconv(), images()
    plan = deployment_plan(model)
    assert plan.kind == "static" and plan.structure["execution"] == "masked"
    export_model(model, tmp_path, format=fmt)
    out = DeployedModel.load(tmp_path)(x)
    with torch.no_grad():
        compact, masked = model(x), model(x, execution="masked")
    density = compact.decisions["density"]
    assert bool(((density > 0.2) & (density < 0.8)).all())  # the gates do decide
    torch.testing.assert_close(out.logits, compact.logits, rtol=1e-4, atol=1e-4)
    for i in range(model.num_gated_blocks):
        assert torch.equal(out.decisions[f"spatial_mask.{i}"], compact.decisions[f"spatial_mask.{i}"])
    # the graph computes every position: its cost is the masked one; what compact would spend is kept
    torch.testing.assert_close(out.flops, masked.flops.to(out.flops.dtype))
    torch.testing.assert_close(out.decisions["compact_flops"], compact.flops.to(out.decisions["compact_flops"].dtype))
    assert bool((out.flops > compact.flops.to(out.flops.dtype)).all())


def test_a_density_cap_is_fixed_at_export_and_a_call_time_policy_refused(tmp_path):
    model, x = dynconv(), images()
    cap = GatePolicy(thresholds=(0.0,) * model.num_gated_blocks, max_density=0.3)
    export_model(model, tmp_path, policy=cap)
    deployed = DeployedModel.load(tmp_path)
    out = deployed(x)
    with torch.no_grad():
        want = model(x, policy=cap)
    torch.testing.assert_close(out.logits, want.logits, rtol=1e-4, atol=1e-4)
    assert bool((out.decisions["density"] <= 0.3 + 1e-6).all())
    with pytest.raises(ConfigError, match="fixed at export"):
        deployed(x, policy=cap)


def test_sact_deploys_its_masked_execution(tmp_path):
    torch.manual_seed(0)
    model, x = create_model("sact_resnet20").eval(), images(3)
    export_model(model, tmp_path)
    out = DeployedModel.load(tmp_path)(x)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(out.logits, want.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.decisions["ponder"], want.decisions["ponder"], rtol=1e-4, atol=1e-4)


def test_a_policy_of_another_family_is_refused_by_name():
    with pytest.raises(ConfigError, match="must be a GatePolicy"):
        deployment_plan(dynconv(), policy=ExitPolicy("maxprob", []))
