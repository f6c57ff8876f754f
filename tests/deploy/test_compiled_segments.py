"""Each graph of a deployment plan compiles whole; compiled pieces decide like eager.

`torch.compile` of a compact forward breaks its graph at every data-dependent decision
(`nonzero` of a gate mask, the host sync after an exit's criterion); the plan's pieces
hold no decision, so each is one graph with no break. The compiled runtime then gives
the decisions and logits of eager compact inference, with every piece compiled (none
left to eager because dynamo ran out of variants of a code object shared by many pieces).
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from dynamicnets.deploy import DeployedModel, deployment_plan
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.inference import run_early_exit
from dynamicnets.models import create_model

from deploy_helpers import exit_policy_with_margin, gate_policy_with_margin, images

GATED = ("convnet_aig_resnet", {"depth": 14, "width": 4})
MSDNET = ("msdnet_cifar", {"channels": 8, "growth_rate": 4, "head_channels": 16})  # 5 exits, list states
RESNET_EXITS = ("resnet_exits", {"depth": 8, "width": 4})


@pytest.mark.parametrize("name,kwargs", [GATED, RESNET_EXITS, pytest.param(*MSDNET, marks=pytest.mark.slow)])
def test_every_plan_graph_compiles_without_a_break(name, kwargs):
    torch.manual_seed(0)
    plan = deployment_plan(create_model(name, **kwargs).eval(), (3, 32, 32))
    for graph_name, graph in plan.graphs.items():
        explained = torch._dynamo.explain(graph.module)(*graph.example)
        assert explained.graph_break_count == 0, (graph_name, explained.break_reasons)
        assert explained.graph_count == 1, graph_name


def _eager(model, policy, x: torch.Tensor):
    """Eager compact inference: `(output, decisions (B, ...))`."""
    with torch.no_grad():
        if isinstance(policy, GatePolicy):
            out = model(x, policy=policy)
            return out, out.decisions["gates"]
        out = run_early_exit(model, x, policy).as_output()
        return out, out.decisions["exit_index"]


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", [GATED, MSDNET])
def test_compiled_plan_decides_like_eager(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = images(32, 5)
    if name == GATED[0]:
        policy = gate_policy_with_margin(deployment_plan(model, (3, 32, 32)), x)
        assert 0.2 < float(_eager(model, policy, x)[1].mean()) < 0.8
    else:
        policy = exit_policy_with_margin(model, x)
        taken = _eager(model, policy, x)[1].unique().tolist()
        assert len(taken) > 2 and taken[-1] == model.num_exits - 1
    torch._dynamo.reset()
    counters.clear()
    compiled = DeployedModel.from_plan(deployment_plan(model, (3, 32, 32), policy), "compiled")
    for batch in (x, x[:1], x[7:8]):  # batch 1 is a variant of its own for each piece
        out = compiled(batch)
        ref, decisions = _eager(model, policy, batch)
        assert torch.equal(out.decisions["gates" if name == GATED[0] else "exit_index"], decisions)
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.flops, ref.flops.double())
    # pieces share code objects: the gated plan's 5 shapes of `BasicBlock.forward`, each
    # with a batch-1 variant, are more than dynamo's default of 8 variants per code object;
    # every frame still compiled, none left to run eagerly
    assert counters["frames"]["total"] == counters["frames"]["ok"] > 0
