"""A `gate_residual_blocks` model as static graphs: the user's forward cut at its gated blocks.

The gates sit inside a forward the library did not write, so the plan reads that forward
with `torch.fx`: every `GatedBlock` is traced as one opaque call, and the code between two
gated calls becomes a segment graph (`segment{k}`: the previous block's output -> the next
block's input; the code before the first block reads the network's input, the code after
the last is the `head`). Each gated block contributes its gate network (`gate{i}`) and its
original block (`block{i}`), so the plan is the one a gated ResNet has and the same runtime
serves it.

The cut is exact only where one tensor crosses it. A forward that keeps another value alive
across a gated block (the network's input reused at the end, a skip around a gated block)
is refused, naming the value and the block; so is a forward `torch.fx` cannot trace
(Python control flow on tensors or their shapes), with the tracer's reason.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, fx, nn

from ..adapt.gating import GatedBlock, GatedModel
from ..errors import ConfigError
from ..gates.block_budget import CAPS as BLOCK_CAPS
from ..gates.thresholds import GatePolicy
from .graphs import GateScore

# (plan, graph name, module, example input) -> the module's outputs on the example
AddGraph = Callable[..., tuple[Tensor, ...]]


class _GatedBlocksAsCalls(fx.Tracer):
    """Traces a user's network with each `GatedBlock` as one call, not its insides."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, GatedBlock) or super().is_leaf_module(module, qualified_name)


def default_gate_policy(model: GatedModel, name: str) -> GatePolicy:
    """The eval rule `sigmoid(logit / tau) > threshold` of `model.decide` as logit cuts."""
    decide = model.decide
    if not decide.hard_eval:
        raise ConfigError(f"model {name!r}: its gates decide softly in eval (decide.hard_eval=False); a deployed "
                          "block runs or not, so set hard_eval=True or pass a GatePolicy")
    cut = decide.tau * math.log(decide.threshold / (1.0 - decide.threshold))
    return GatePolicy(tuple([cut] * model.num_gated_blocks))


def trace_gated_forward(model: GatedModel, name: str) -> fx.GraphModule:
    """The user's forward as an fx graph with one node per gated block call.

    Raises:
        ConfigError: the forward cannot be traced, or it takes more than one input.
    """
    net = model.model
    try:
        graph = _GatedBlocksAsCalls().trace(net)
    except Exception as error:  # fx raises TraceError, TypeError, ... for untraceable code
        raise ConfigError(
            f"model {name!r}: torch.fx cannot trace your network's forward ({type(error).__name__}: {error}); "
            f"deployment cuts it at its gated blocks, which needs a forward without Python control flow on "
            f"tensors or their shapes") from error
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ConfigError(f"model {name!r}: your network's forward takes {len(inputs)} inputs "
                          f"({', '.join(n.name for n in inputs)}); deployment needs exactly one (the batch)")
    return fx.GraphModule(net, graph)


def gated_user_plan(plan, model: GatedModel, x: Tensor, policy: GatePolicy | None, add: AddGraph):
    """Fill `plan` (kind `"gated"`) with the graphs of `model` traced on example `x`.

    Args:
        plan: an empty `DeploymentPlan` of kind `"gated"`.
        model: the `GatedModel` of `gate_residual_blocks`, in eval mode.
        x: example input `(n, *input_shape)`.
        policy: per-gate logit thresholds and caps; default `model.decide`'s eval rule.
        add: records one graph in the plan and returns its outputs (the plan's `_add`).

    Returns:
        `plan`, with `graphs`, `structure` (`steps`, `head`, `num_gates`) and `policy`.
    """
    name = plan.model_name
    if policy is None:
        policy = default_gate_policy(model, name)
    policy.check(model.num_gated_blocks, "policy", caps=BLOCK_CAPS)
    plan.policy = policy.to_dict()
    traced = trace_gated_forward(model, name)
    nodes = list(traced.graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    calls = [n for n in nodes if n.op == "call_module" and isinstance(traced.get_submodule(n.target), GatedBlock)]
    _check_cuts(nodes, position, calls, name)
    missing = sorted(set(model.gated_paths) - {call.target for call in calls})
    if missing:
        raise ConfigError(f"model {name!r}: your forward does not call the gated blocks {missing}")
    source = next(n for n in nodes if n.op == "placeholder")
    h, steps, start, segments = x, [], position[source] + 1, 0
    for expected, call in enumerate(calls):
        block = traced.get_submodule(call.target)
        index = model.gated_paths.index(call.target)
        if index != expected:
            raise ConfigError(
                f"model {name!r}: your forward calls gated block {call.target!r} (gate {index}) where gate "
                f"{expected} ({model.gated_paths[expected]!r}) is due; gate the blocks in the order the forward "
                f"calls them (gate_residual_blocks(paths=...) in that order)")
        (block_input,) = call.args
        if block_input is not source:
            segment = _segment(traced, nodes[start:position[call]], source, block_input)
            (h,) = add(plan, f"segment{segments}", segment, h)
            steps.append({"run": f"segment{segments}"})
            segments += 1
        add(plan, f"gate{index}", GateScore(block.gate), h)
        (h,) = add(plan, f"block{index}", block.block, h)
        steps.append({"gate": f"gate{index}", "block": f"block{index}", "index": index})
        source, start = call, position[call] + 1
    output = nodes[-1]
    (result,) = output.args
    if not isinstance(result, fx.Node):
        raise ConfigError(f"model {name!r}: your network returns {type(result).__name__}; deployment needs one "
                          "tensor of logits")
    add(plan, "head", _segment(traced, nodes[start:-1], source, result), h)
    plan.structure = {"steps": steps, "head": "head", "num_gates": model.num_gated_blocks}
    return plan


def _check_cuts(nodes: list[fx.Node], position: dict[fx.Node, int], calls: list[fx.Node], name: str) -> None:
    """Every gated call takes one tensor, and only its output lives on past it."""
    seen = set()
    for call in calls:
        if call.target in seen:
            raise ConfigError(f"model {name!r}: gated block {call.target!r} is called twice in your forward")
        seen.add(call.target)
        if len(call.args) != 1 or call.kwargs or not isinstance(call.args[0], fx.Node):
            raise ConfigError(f"model {name!r}: gated block {call.target!r} must be called with one tensor")
        at = position[call]
        for node in nodes[:at]:
            if node.op == "get_attr":  # a parameter or buffer: each segment reads it itself
                continue
            late = [u for u in node.users if position[u] > at]
            if late:
                raise ConfigError(
                    f"model {name!r}: the value {node.name!r} computed before gated block {call.target!r} is "
                    f"used after it (by {late[0].name!r}); deployment cuts your forward at each gated block "
                    f"and carries only the block's output across")


def _segment(root: fx.GraphModule, body: list[fx.Node], source: fx.Node, result: fx.Node) -> fx.GraphModule:
    """The nodes `body` as a graph `source's value -> result's value`."""
    graph = fx.Graph()
    env = {source: graph.placeholder("x")}

    def value(node: fx.Node) -> fx.Node:
        if node not in env:
            if node.op != "get_attr":
                raise AssertionError(f"segment value {node.name!r} has no source")  # _check_cuts rules it out
            env[node] = graph.get_attr(node.target)
        return env[node]

    for node in body:
        if node.op != "get_attr":
            env[node] = graph.node_copy(node, value)
    graph.output(value(result))
    return fx.GraphModule(root, graph)

