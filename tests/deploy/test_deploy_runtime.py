"""The deployment runtime dispatches exported pieces exactly as eager compact inference.

Fast tests run the plan's own modules (`backend="eager"`), so they check the splitting,
the dispatch, the decisions and the costs without paying for an exporter; one tiny
multi-exit model goes through `torch.export` files end to end, with the manifest's
error cases. `test_deploy_formats.py` (slow) exports every kind to both formats.
"""
from __future__ import annotations

import json

import pytest
import torch

from dynamicnets.deploy import DeployedModel, deployment_plan, export_model, read_manifest
from dynamicnets.errors import ConfigError
from dynamicnets.flops import flop_counter
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.inference import ExitPolicy, run_early_exit
from dynamicnets.models import create_model


def _mixed_exit_policy(model, x) -> ExitPolicy:
    """Thresholds at the median max-probability of each exit: some samples leave, some stay."""
    with torch.no_grad():
        logits = model(x, execution="masked").exit_logits if "execution" in str(model.forward.__code__.co_varnames) \
            else model(x).exit_logits
    return ExitPolicy("maxprob", [float(l.softmax(-1).amax(-1).median()) for l in logits[:-1]])


def _mixed_gate_policy(model, x) -> GatePolicy:
    """Per gate, the median logit of the batch: about half the samples run each block."""
    logits = []
    hooks = [g.register_forward_hook(lambda m, i, o: logits.append(o.reshape(-1))) for g in model.gates]
    with torch.no_grad():
        model(x, execution="masked", policy=GatePolicy.constant(float("-inf"), model.num_gated_blocks))
    for h in hooks:
        h.remove()
    return GatePolicy(tuple(float(l.median()) for l in logits))


def _flops_seen(fn, *args, **kwargs):
    with flop_counter() as counter:
        out = fn(*args, **kwargs)
    return out, counter.get_total_flops()


@pytest.fixture(scope="module")
def images():
    return torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,kwargs", [("resnet_exits", {"depth": 8, "width": 4}),
                                         ("msdnet_cifar", {}),
                                         ("ranet_cifar", {"channels": 8, "growth_rate": 4, "head_channels": 16})])
def test_early_exit_runtime_equals_executor(name, kwargs, images):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = images if name == "resnet_exits" else torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    policy = _mixed_exit_policy(model, x)
    deployed = DeployedModel.from_plan(deployment_plan(model, tuple(x.shape[1:]), policy))
    out, counted = _flops_seen(deployed, x)
    ref = run_early_exit(model, x, policy)
    assert len(set(ref.exit_index.tolist())) > 1  # the case is dynamic
    assert torch.equal(out.decisions["exit_index"], ref.exit_index)
    torch.testing.assert_close(out.logits, ref.logits)
    assert torch.equal(out.flops, ref.flops)
    assert counted == pytest.approx(float(out.flops.sum()))


def test_gated_runtime_equals_compact_model(images):
    torch.manual_seed(0)
    model = create_model("convnet_aig_resnet", depth=14, width=4).eval()
    policy = _mixed_gate_policy(model, images)
    deployed = DeployedModel.from_plan(deployment_plan(model, (3, 16, 16), policy))
    out, counted = _flops_seen(deployed, images)
    with torch.no_grad():
        ref = model(images, policy=policy)
    gates = ref.decisions["gates"]
    assert 0 < float(gates.mean()) < 1
    assert torch.equal(out.decisions["gates"], gates)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.flops, ref.flops.double())
    assert counted == pytest.approx(float(out.flops.sum()))


def test_dsnet_runtime_groups_by_width(images):
    torch.manual_seed(0)
    model = create_model("dsnet_resnet_cifar", base_width=4).eval()
    with torch.no_grad():  # a gate that spreads the samples over the widths
        model.gate.weight.normal_(0, 5.0)
        model.gate.bias -= model.gate_logits(images).mean(dim=0)
    deployed = DeployedModel.from_plan(deployment_plan(model, (3, 16, 16)))
    out, counted = _flops_seen(deployed, images)
    with torch.no_grad():
        ref = model(images)
    assert len(set(ref.decisions["width_index"].tolist())) > 1
    assert torch.equal(out.decisions["width_index"], ref.decisions["width_index"])
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.flops, ref.flops.double())
    assert counted == pytest.approx(float(out.flops.sum()))


def test_slimmable_runtime_runs_the_asked_width(images):
    model = create_model("slimmable_resnet_cifar", base_width=4).eval()
    deployed = DeployedModel.from_plan(deployment_plan(model, (3, 16, 16)))
    for width in model.widths:
        out, counted = _flops_seen(deployed, images, width=width)
        with torch.no_grad():
            ref = model(images, width=width)
        torch.testing.assert_close(out.logits, ref.logits)
        assert counted == pytest.approx(float(out.flops.sum()))
    with pytest.raises(ConfigError, match="width"):
        deployed(images, width=0.3)
    with pytest.raises(ConfigError, match="empty batch"):
        deployed(images[:0])
    with pytest.raises(ConfigError, match="exported for inputs"):
        deployed(torch.randn(2, 3, 8, 8))


def test_unsupported_model_and_wrong_policy_are_clear_errors():
    with pytest.raises(ConfigError, match="cannot be deployed"):
        deployment_plan(create_model("moe_resnet_cifar"), (3, 16, 16))  # static ResNets deploy as one graph
    with pytest.raises(ConfigError, match="ExitPolicy"):
        deployment_plan(create_model("resnet_exits", depth=8, width=4), (3, 16, 16), GatePolicy((0.0,)))
    with pytest.raises(ConfigError, match="recurrent"):
        deployment_plan(create_model("skipnet_resnet", depth=14, width=4, gate="rnn"), (3, 16, 16))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 3-exit digits CNN exported with `torch.export` (6 graphs) and its policy."""
    torch.manual_seed(0)
    model = create_model("multi_exit_cnn", width=4).eval()
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    policy = _mixed_exit_policy(model, x)
    folder = tmp_path_factory.mktemp("exported")
    export_model(model, folder, format="torch.export", policy=policy)
    return model, x, policy, folder


def test_torch_export_folder_runs_like_eager(exported):
    model, x, policy, folder = exported
    deployed = DeployedModel.load(folder)
    assert deployed.backend == "torch.export"
    for batch in (x, x[:1]):  # batch 1 too: the exported batch dimension is dynamic
        out = deployed(batch)
        ref = run_early_exit(model, batch, policy)
        assert torch.equal(out.decisions["exit_index"], ref.exit_index)
        torch.testing.assert_close(out.logits, ref.logits)
        assert torch.equal(out.flops, ref.flops)
    manifest = read_manifest(folder)
    assert manifest["policy"]["thresholds"] == pytest.approx(policy.thresholds)
    assert sorted(manifest["graphs"]) == sorted([f"segment{k}" for k in range(3)] + [f"exit{k}" for k in range(3)])


def test_missing_or_foreign_graph_is_a_clear_error(exported, tmp_path):
    _, _, _, folder = exported
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "exit1.pt2").unlink()
    with pytest.raises(ConfigError, match="exit1.pt2.*missing"):
        DeployedModel.load(copy)
    (copy / "exit1.pt2").write_bytes((folder / "exit0.pt2").read_bytes())  # another graph's file
    with pytest.raises(ConfigError, match="SHA-256"):
        DeployedModel.load(copy)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["kind"] = "tree"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="'kind'"):
        DeployedModel.load(copy)
    with pytest.raises(ConfigError, match="no manifest"):
        DeployedModel.load(tmp_path)
    with pytest.raises(ConfigError, match="onnxruntime"):
        DeployedModel.load(folder, backend="onnxruntime")


def test_gated_runtime_honours_the_compute_cap(images):
    """All gates forced on (thresholds -inf): the exported cap binds exactly as in eager."""
    torch.manual_seed(0)
    model = create_model("convnet_aig_resnet", depth=14, width=4).eval()
    everything = GatePolicy.constant(float("-inf"), model.num_gated_blocks)
    with torch.no_grad():
        full = float(model(images, policy=everything).flops[0])
        none = float(model(images, policy=GatePolicy.constant(float("inf"), model.num_gated_blocks)).flops[0])
    cap = (full + none) / 2
    policy = GatePolicy.constant(float("-inf"), model.num_gated_blocks, max_flops=cap)
    deployed = DeployedModel.from_plan(deployment_plan(model, (3, 16, 16), policy))
    out = deployed(images)
    with torch.no_grad():
        ref = model(images, policy=policy)
    assert float(out.flops.max()) <= cap < full
    assert torch.equal(out.decisions["gates"], ref.decisions["gates"])
    assert torch.equal(out.decisions["forced_off"], ref.decisions["forced_off"])
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.flops, ref.flops.double())
