"""A `gate_residual_blocks` model as static graphs: the user's forward cut at its gated blocks.

The gates sit inside a forward the library did not write, so the plan reads that forward
with `torch.fx` (called as eager calls it, `net(x)`, its other arguments at their defaults):
every `GatedBlock` is traced as one opaque call, and the code between two gated calls
becomes a segment graph (`segment{k}`: the previous block's output -> the next block's
input; the code before the first block reads the network's input, the code after the last
is the `head`). Each gated block contributes its gate network (`gate{i}`) and its original
block (`block{i}`), so the plan is the one a gated ResNet has and the same runtime serves it.
The library's own layers (a swapped dynamic convolution, say) stay one call each.

The cut is exact where one tensor crosses it. Values that do not depend on the input (a
parameter's `exp()`, a constant) and the batch size (`x.size(0)`, `x.shape[0]`) are
recomputed in each segment that reads them. A forward that keeps another value alive
across a gated block (the network's input reused at the end, a skip around a gated block)
is refused, naming the value and the block; so is a forward `torch.fx` cannot trace (Python
control flow on tensors or their shapes), with the tracer's reason, and a network holding
other layers that take decisions of their own.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable

from torch import Tensor, fx, nn

from ..adapt.gating import GatedBlock, GatedModel
from ..errors import ConfigError
from ..execution import supported_executions
from ..gates.block_budget import CAPS as BLOCK_CAPS
from ..gates.thresholds import GatePolicy
from .graphs import GateScore

# (plan, graph name, module, example input) -> the module's outputs on the example
AddGraph = Callable[..., tuple[Tensor, ...]]
NET = "net"  # the user's network inside `_Called`: every traced path starts with "net."


class _Called(nn.Module):
    """`net(x)` as eager calls it: what is traced (keyword arguments at their defaults)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor):
        return self.net(x)


class _GatedBlocksAsCalls(fx.Tracer):
    """Traces a user's network with each `GatedBlock`, and each of the library's modules
    that holds none, as one call."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, GatedBlock):
            return True
        if type(module).__module__.startswith("dynamicnets.") and not isinstance(module, _Called):
            return not any(isinstance(sub, GatedBlock) for sub in module.modules())
        return super().is_leaf_module(module, qualified_name)


def refuse_decisions_inside(net: nn.Module, name: str, allowed: tuple[type, ...] = ()) -> None:
    """Raise if a layer of `net` (not `net` itself, not an `allowed` type) takes decisions of
    its own in the forward (it has execution modes): no static graph holds them."""
    for path, sub in net.named_modules():
        if path and not isinstance(sub, allowed) and supported_executions(sub):
            raise ConfigError(
                f"model {name!r}: its layer {path!r} ({type(sub).__name__}) takes decisions inside your own "
                f"forward, which cannot be cut into static graphs around them; deploy one of the library's "
                f"dynamic models, or export the masked path with torch.export yourself")


def default_gate_policy(model: GatedModel, name: str) -> GatePolicy:
    """The eval rule `sigmoid(logit / tau) > threshold` of `model.decide` as logit cuts."""
    decide = model.decide
    if not decide.hard_eval:
        raise ConfigError(f"model {name!r}: its gates decide softly in eval (decide.hard_eval=False); a deployed "
                          "block runs or not, so set hard_eval=True or pass a GatePolicy")
    cut = decide.tau * math.log(decide.threshold / (1.0 - decide.threshold))
    return GatePolicy(tuple([cut] * model.num_gated_blocks))


def trace_gated_forward(model: GatedModel, name: str) -> fx.GraphModule:
    """The user's forward as an fx graph with one node per gated block call (paths `net.<path>`).

    Raises:
        ConfigError: the forward cannot be traced, or the network holds layers that decide.
    """
    refuse_decisions_inside(model.model, name, allowed=(GatedBlock,))
    called = _Called(model.model)
    # A forward that keeps something on its module (`self.features = h`) stores a tracing
    # proxy there; every module's plain attributes are put back as they were.
    attributes = [(module, dict(module.__dict__)) for module in called.modules()]
    try:
        graph = _GatedBlocksAsCalls().trace(called)
    except Exception as error:  # fx raises TraceError, TypeError, ... for untraceable code
        raise ConfigError(
            f"model {name!r}: torch.fx cannot trace your network's forward ({type(error).__name__}: {error}); "
            f"deployment cuts it at its gated blocks, which needs a forward without Python control flow on "
            f"tensors or their shapes") from error
    finally:
        for module, saved in attributes:
            module.__dict__.clear()
            module.__dict__.update(saved)
    return fx.GraphModule(called, graph)


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
    cut = _Cut(traced, name)
    missing = sorted(set(model.gated_paths) - {cut.path(call) for call in cut.calls})
    if missing:
        raise ConfigError(f"model {name!r}: your forward does not call the gated blocks {missing}")
    h, steps, start, segments = x, [], cut.position[cut.source] + 1, 0
    source = cut.source
    for expected, call in enumerate(cut.calls):
        path = cut.path(call)
        block = traced.get_submodule(call.target)
        index = model.gated_paths.index(path)
        if index != expected:
            raise ConfigError(
                f"model {name!r}: your forward calls gated block {path!r} (gate {index}) where gate "
                f"{expected} ({model.gated_paths[expected]!r}) is due; gate the blocks in the order the forward "
                f"calls them (gate_residual_blocks(paths=...) in that order)")
        (block_input,) = call.args
        body = cut.nodes[start:cut.position[call]]
        if block_input is not source or any(not cut.free(n) for n in body):
            (h,) = add(plan, f"segment{segments}", cut.segment(body, source, block_input), h)
            steps.append({"run": f"segment{segments}"})
            segments += 1
        add(plan, f"gate{index}", GateScore(block.gate), h)
        (h,) = add(plan, f"block{index}", block.block, h)
        steps.append({"gate": f"gate{index}", "block": f"block{index}", "index": index})
        source, start = call, cut.position[call] + 1
    (result,) = cut.nodes[-1].args
    if not isinstance(result, fx.Node):
        raise ConfigError(f"model {name!r}: your network returns {type(result).__name__}; deployment needs one "
                          "tensor of logits")
    add(plan, "head", cut.segment(cut.nodes[start:-1], source, result), h)
    plan.structure = {"steps": steps, "head": "head", "num_gates": model.num_gated_blocks}
    return plan


def _shown(node: fx.Node) -> str:
    """A traced value's name as the user's forward would suggest it (without the `net_` prefix)."""
    return node.name[len(NET) + 1:] if node.name.startswith(NET + "_") else node.name


class _Cut:
    """The traced forward, checked to be cut at its gated calls, and the segments between them.

    A node is *free* when a segment can recompute it instead of receiving it: it does not
    depend on the input (parameters, constants and pure functions of them), or it is the
    batch size of the input (every segment runs on the whole batch).
    """

    def __init__(self, traced: fx.GraphModule, name: str) -> None:
        self.root, self.name = traced, name
        self.nodes = list(traced.graph.nodes)
        self.position = {node: i for i, node in enumerate(self.nodes)}
        self.source = next(n for n in self.nodes if n.op == "placeholder")
        self.calls = [n for n in self.nodes
                      if n.op == "call_module" and isinstance(traced.get_submodule(n.target), GatedBlock)]
        self._constant: dict[fx.Node, bool] = {}
        self._check()

    def path(self, call: fx.Node) -> str:
        """The gated block's path in the user's network."""
        return call.target[len(NET) + 1:]

    def free(self, node: fx.Node) -> bool:
        return self._input_free(node) or self._batch_size(node)

    def _input_free(self, node: fx.Node) -> bool:
        if node not in self._constant:
            inputs = node.all_input_nodes
            self._constant[node] = node.op == "get_attr" or (
                node.op in ("call_function", "call_method") and not node.is_impure()
                and all(self._input_free(n) for n in inputs))
        return self._constant[node]

    def _batch_size(self, node: fx.Node) -> bool:
        """`x.size(0)`, `x.size(dim=0)` or `x.shape[0]` of the network's input."""
        if node.op == "call_method" and node.target == "size":
            dims = list(node.args[1:]) + [node.kwargs[k] for k in ("dim",) if k in node.kwargs]
            return node.args[0] is self.source and dims == [0]
        if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
            whole = node.args[0]
            return isinstance(whole, fx.Node) and whole.args[:1] == (self.source,) and (
                (whole.op == "call_function" and whole.target is getattr and whole.args[1] == "shape")
                or (whole.op == "call_method" and whole.target == "size" and len(whole.args) == 1))
        return False

    def _check(self) -> None:
        """Every gated call takes one tensor, and only its output (and free values) live past it."""
        seen = set()
        for call in self.calls:
            path = self.path(call)
            if call.target in seen:
                raise ConfigError(f"model {self.name!r}: gated block {path!r} is called twice in your forward")
            seen.add(call.target)
            if len(call.args) != 1 or call.kwargs or not isinstance(call.args[0], fx.Node):
                raise ConfigError(f"model {self.name!r}: gated block {path!r} must be called with one tensor")
            at = self.position[call]
            for node in self.nodes[:at]:
                if self.free(node):
                    continue
                late = [u for u in node.users if self.position[u] > at and not self.free(u)]
                if late:
                    raise ConfigError(
                        f"model {self.name!r}: the value {_shown(node)!r} computed before gated block {path!r} is "
                        f"used after it (by {_shown(late[0])!r}); deployment cuts your forward at each gated block "
                        f"and carries only the block's output across")

    def segment(self, body: list[fx.Node], source: fx.Node, result: fx.Node) -> fx.GraphModule:
        """The nodes `body` as a graph `source's value -> result's value`, free values recomputed."""
        graph = fx.Graph()
        env = {source: graph.placeholder("x")}

        def value(node: fx.Node) -> fx.Node:
            if node not in env:
                if self._batch_size(node):
                    env[node] = graph.call_method("size", (env[source], 0))
                elif self._input_free(node):
                    env[node] = graph.node_copy(node, value)
                else:
                    raise AssertionError(f"segment value {node.name!r} has no source")  # _check rules it out
            return env[node]

        for node in body:
            if not self.free(node):
                env[node] = graph.node_copy(node, value)
        graph.output(value(result))
        return fx.GraphModule(self.root, graph)
