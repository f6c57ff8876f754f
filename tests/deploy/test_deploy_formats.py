"""Every kind of dynamic model exported to both formats runs like eager compact inference.

For early exits (a ResNet with exits, MSDNet), layer skipping (ConvNet-AIG), a slimmable
network and DS-Net, the folder written by `export_model` in `torch.export` and in ONNX
format, loaded by `DeployedModel.load` (the `torch.export` engine, onnxruntime), gives the
decisions of eager compact inference and its logits within float tolerance, on inputs
whose decisions are mixed and at batch 1. Exporting takes seconds per graph: slow.
A fast check runs MSDNet's plan eagerly with samples reaching its last exit.
"""
from __future__ import annotations

import pytest
import torch

from dynamicnets.deploy import DeployedModel, deployment_plan, export_model
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.inference import run_early_exit
from dynamicnets.models import create_model

from deploy_helpers import exit_policy_with_margin, gate_policy_with_margin, images

MSDNET_SMALL = {"channels": 8, "growth_rate": 4, "head_channels": 16}  # 5 exits; the last stage reads 1 scale
CASES = {  # case -> (registered model, kwargs, image size)
    "resnet_exits": ("resnet_exits", {"depth": 8, "width": 4}, 16),
    "msdnet_cifar": ("msdnet_cifar", MSDNET_SMALL, 32),
    "ranet_cifar": ("ranet_cifar", {"channels": 8, "growth_rate": 4, "head_channels": 16}, 32),
    "convnet_aig": ("convnet_aig_resnet", {"depth": 14, "width": 4}, 16),
    "slimmable": ("slimmable_resnet_cifar", {"base_width": 4}, 16),
    "dsnet": ("dsnet_resnet_cifar", {"base_width": 4}, 16),
}


def _dsnet_with_spread_gate(model, x):
    """DS-Net whose gate spreads `x` over the widths; only the samples whose top two
    width scores are 0.1 apart (no rounding can change their argmax)."""
    with torch.no_grad():
        model.gate.weight.normal_(0, 5.0, generator=torch.Generator().manual_seed(4))
        model.gate.bias -= model.gate_logits(x).mean(dim=0)
        top2 = model.gate_logits(x).topk(2, dim=-1).values
    return x[(top2[:, 0] - top2[:, 1]) > 0.1]


def _reference(model, x, policy):
    """Eager compact inference of `model` on `x`: `(DynamicOutput, decision key or None)`."""
    with torch.no_grad():
        if isinstance(policy, GatePolicy):
            return model(x, policy=policy), "gates"
        if policy is not None:
            return run_early_exit(model, x, policy).as_output(), "exit_index"
        out = model(x)
    return out, ("width_index" if "width_index" in out.decisions else None)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    """`(name, model, inputs, policy)` with decisions mixed on the inputs."""
    name = request.param
    registered, kwargs, size = CASES[name]
    torch.manual_seed(0)
    model = create_model(registered, **kwargs).eval()
    x = images(32, 5, size)
    policy = None
    if name in ("resnet_exits", "msdnet_cifar", "ranet_cifar"):
        policy = exit_policy_with_margin(model, x)
    elif name == "convnet_aig":
        policy = gate_policy_with_margin(deployment_plan(model, (3, size, size)), x)
    elif name == "dsnet":
        x = _dsnet_with_spread_gate(model, x)
    ref, key = _reference(model, x, policy)
    if key is not None:
        assert 0 < float(ref.decisions[key].double().mean()) and len(ref.decisions[key].unique()) > 1
    return name, model, x, policy


def _check(deployed, model, x, policy, **kwargs):
    out = deployed(x, **kwargs)
    with torch.no_grad():
        ref, key = _reference(model, x, policy) if not kwargs else (model(x, **kwargs), None)
    if key is not None:
        assert torch.equal(out.decisions[key], ref.decisions[key])
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.flops, ref.flops.double())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch.export", "onnx"])
def test_exported_folder_runs_like_eager(case, fmt, tmp_path):
    name, model, x, policy = case
    export_model(model, tmp_path, format=fmt, input_shape=tuple(x.shape[1:]), policy=policy)
    deployed = DeployedModel.load(tmp_path)
    assert deployed.backend == ("onnxruntime" if fmt == "onnx" else "torch.export")
    if fmt == "torch.export" and policy is not None and name != "convnet_aig":
        # an exit head wraps the whole model; its program keeps only the head's own weights
        head = torch.export.load(str(tmp_path / "exit0.pt2"))
        assert 0 < len(head.state_dict) < len(model.state_dict()) / 2
    for batch in (x, x[:1], x[-1:]):
        if name == "slimmable":
            for width in model.widths:
                _check(deployed, model, batch, None, width=width)
        else:
            _check(deployed, model, batch, policy)


def test_msdnet_plan_runs_to_its_last_exit():
    """MSDNet's last stage reads a list of one feature map: it must stay a list between stages."""
    torch.manual_seed(0)
    model = create_model("msdnet_cifar", **MSDNET_SMALL).eval()
    x = images(32, 5)
    policy = exit_policy_with_margin(model, x)
    deployed = DeployedModel.from_plan(deployment_plan(model, (3, 32, 32), policy))
    ref = run_early_exit(model, x, policy)
    assert ref.exit_index.unique().tolist() == list(range(model.num_exits))
    out = deployed(x)
    assert torch.equal(out.decisions["exit_index"], ref.exit_index)
    torch.testing.assert_close(out.logits, ref.logits)


def test_a_dsnet_exports_its_fitted_width_policy_and_runs_it_like_eager(tmp_path):
    from dynamicnets import ConfigError
    from dynamicnets.inference import WidthPolicy, calibrate_width_policy

    torch.manual_seed(0)
    model = create_model("dsnet_resnet_cifar", base_width=4).eval()
    x = torch.randn(24, 3, 16, 16) * 2
    with torch.no_grad():
        model.gate.weight.normal_(0, 3.0)
    costs = model.width_costs((3, 16, 16)) + model.gate_flops((3, 16, 16))
    fitted = calibrate_width_policy(model, x, float(costs.mean()), max_flops=float(costs[2]))
    export_model(model, tmp_path, format="torch.export", input_shape=(3, 16, 16), policy=fitted)
    deployed = DeployedModel.load(tmp_path)
    assert WidthPolicy.from_dict(deployed.default_policy()) == fitted
    with torch.no_grad():
        ref = model(x, policy=fitted)
    ours = deployed(x)
    assert torch.equal(ours.decisions["width_index"], ref.decisions["width_index"])
    assert torch.equal(ours.decisions["width_capped"], ref.decisions["width_capped"])
    assert ours.decisions["width_index"].max() <= 2 and torch.equal(ours.flops, ref.flops)
    torch.testing.assert_close(ours.logits, ref.logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="without width="):
        deployed(x, width=0.5, policy=fitted)
    with pytest.raises(ConfigError, match="must be a WidthPolicy"):
        deployment_plan(model, (3, 16, 16), GatePolicy((0.0,)))
    with pytest.raises(ConfigError, match="'bias' has 2 entries"):
        deployment_plan(model, (3, 16, 16), WidthPolicy(bias=(0.0, 1.0)))
