"""Skip the residual blocks of a user's own model per sample, compactly at inference.

`gate_residual_blocks(model, input_shape=..., block_types=(MyBlock,))` replaces each chosen
block of `model` (in place) by a `GatedBlock`: the original block, plus a small gate
network that reads the block's input and scores whether to run it. It returns a
`GatedModel` wrapping `model`, whose forward returns a `DynamicOutput`:

- the gate logits become decisions by a straight-through Gumbel-sigmoid while training
  and by `sigmoid(logit / tau) > threshold` in eval (`GumbelSigmoidGate`);
- each sample then gets `g * block(x) + (1 - g) * x` (`layers.gated_block.run_gated`):
  *masked* in training (every block on the whole batch, static shapes), *compact* in eval
  (a block runs only on the samples whose gate is on). `execution=` overrides the default;
- `flops (B,)` is what each sample ran, `decisions["gates"] (B, G)` the decisions and, in
  training, `aux_losses["target_rate"]` pulls the execution rate toward `target_rate`
  (ConvNet-AIG's loss; without it the gates learn to run everything);
- in eval, `policy=GatePolicy(...)` replaces the eval rule by per-gate thresholds on the
  logits and may cap each sample's compute (`max_flops`, `max_blocks`): in the order the
  blocks run, a gate that would take its sample over the cap is forced off
  (`gates.block_budget`; `decisions["forced_off"]` shows which), so no input costs more.

Only blocks whose output has their input's shape can be skipped (a skipped sample passes
unchanged). A block that downsamples or widens is refused with an error naming its path,
or left ungated with `reshaping="keep"`.

Costs: the first forward on a per-sample input shape runs the model once on meta tensors
(no data, no compute) under `FlopCounterMode` to find every gated block's input shape and
the cost of the rest; the figures are cached per shape and the measuring is hidden from
any counter active around the call.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import _disable_current_modes

from ..errors import ConfigError
from ..execution import Execution, ExecutionLike, resolve_execution
from ..gates import GumbelSigmoidGate
from ..gates.block_budget import CAPS as BLOCK_CAPS, BlockBudget, worst_case_blocks
from ..gates.thresholds import GatePolicy
from ..layers.gated_block import gated_flops, is_hard, run_gated
from ..flops import flops_and_shape
from ..flops.counter import flop_counter
from ..flops.meta import masked_dynamic_layers, meta_tensors
from ..models.skipping.convnet_aig import target_rate_loss
from ..gates.block_gates import PooledLinearGate, PooledMLPGate
from ..outputs import DynamicOutput

# per-sample block input shape (C, *spatial) -> gate network, (B, C, *spatial) -> (B,) logits
GateFactory = Callable[[tuple[int, ...]], nn.Module]
GATES = ("mlp", "linear")
RESHAPING = ("error", "keep")


@dataclass
class _Run:
    """What one `GatedModel.forward` hands to its gated blocks (execution, forced gates) and
    collects from them (decisions, block input shapes)."""

    execution: Execution
    decide: nn.Module
    gates: Tensor | None = None
    generator: torch.Generator | None = None
    cuts: list[float] | None = None
    budget: BlockBudget | None = None
    decisions: dict[int, Tensor] = field(default_factory=dict)
    shapes: dict[int, tuple[int, ...]] = field(default_factory=dict)


class GatedBlock(nn.Module):
    """A user block run per sample on a gate's decision (see the module docstring).

    Args:
        block: the original block, shape-preserving `(B, *S) -> (B, *S)`.
        gate: gate network `(B, *S) -> (B,)` logits.
        path: the block's name in the model (for messages).

    Shapes:
        `forward(x (B, *S)) -> (B, *S)`. Called by `GatedModel`, it takes its decision and
        execution from the running forward; called on its own (the user's model outside the
        wrapper), it decides with `sigmoid(logit) > 0.5` / a straight-through Gumbel sample
        and runs `execution` (default masked in training, compact in eval).
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(self, block: nn.Module, gate: nn.Module, path: str = "") -> None:
        super().__init__()
        self.block = block
        self.gate = gate
        self.path = path
        self.index = 0
        self._run: _Run | None = None  # set only while a GatedModel forward runs
        self._decide = GumbelSigmoidGate(1.0, hard=True)

    def forward(self, x: Tensor, *, execution: ExecutionLike = None) -> Tensor:
        run = self._run
        if run is None:
            decision = self._decide(self.gate(x))
            return run_gated(self.block, x, decision, resolve_execution(execution, self.training), validate=False)
        if self.index in run.decisions:
            raise ConfigError(
                f"gated block {self.path!r} ran twice in one forward; a gated block must be called once"
            )
        run.shapes[self.index] = tuple(x.shape[1:])
        if run.gates is not None:
            decision = run.gates[:, self.index]
        elif run.cuts is not None:
            decision = self.gate(x) > run.cuts[self.index]
        else:
            decision = run.decide(self.gate(x), generator=run.generator)
        if run.budget is not None:
            decision = run.budget.admit(self.index, decision)
        run.decisions[self.index] = decision
        return run_gated(self.block, x, decision, run.execution, validate=False)


class GatedModel(nn.Module):
    """A user model whose chosen blocks are `GatedBlock`s; forward returns a `DynamicOutput`.

    Built by `gate_residual_blocks`. Attributes: `model` (the user's model, holding the
    gated blocks), `gated_paths` (names of the gated blocks, in gate order), `decide` (the
    `GumbelSigmoidGate` turning logits into decisions: set `decide.threshold` / `tau` to
    move the eval operating point), `target_rate`, `rate_weight`.

    Shapes:
        `forward(x (B, *input_shape)) -> DynamicOutput` with `logits` (what `model`
        returns), `flops (B,)`, `decisions["gates"] (B, G)`, `["executed_fraction"] (B,)`,
        `["compact_flops"] (B,)`, with a compute cap `["forced_off"] (B, G)` and, in
        training, `aux_losses["target_rate"]`.

    Costs: everything outside the gated blocks is a fixed per-sample cost, measured once per
    input shape; another dynamic layer of yours in that part (an MoE, a Skip-RNN) is counted
    at its masked, every-step cost, an upper bound of what it runs.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(
        self,
        model: nn.Module,
        gated_paths: Sequence[str],
        *,
        input_shape: Sequence[int],
        tau: float = 1.0,
        threshold: float = 0.5,
        target_rate: float = 0.6,
        rate_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= target_rate <= 1.0 or rate_weight < 0:
            raise ConfigError(
                f"GatedModel: target_rate must be in [0, 1] and rate_weight >= 0, got {target_rate!r}, "
                f"{rate_weight!r}"
            )
        self.model = model
        self.gated_paths = tuple(gated_paths)
        blocks = [model.get_submodule(p) for p in self.gated_paths]
        if not all(isinstance(b, GatedBlock) for b in blocks):
            raise ConfigError("GatedModel: every gated path must hold a GatedBlock (use gate_residual_blocks)")
        for i, block in enumerate(blocks):
            block.index = i
        self._blocks = blocks  # a plain list: the modules are registered under `model`
        self.decide = GumbelSigmoidGate(tau, hard=True, threshold=threshold)
        self.target_rate = float(target_rate)
        self.rate_weight = float(rate_weight)
        self.default_input_shape = tuple(int(s) for s in input_shape)
        self._cost_cache: dict[tuple[int, ...], tuple[float, float, Tensor, float]] = {}

    @property
    def num_gated_blocks(self) -> int:
        return len(self._blocks)

    def forward(
        self,
        x: Tensor,
        *,
        gates: Tensor | None = None,
        execution: ExecutionLike = None,
        generator: torch.Generator | None = None,
        policy: GatePolicy | None = None,
    ) -> DynamicOutput:
        """Args:
            x: `(B, *input_shape)`.
            gates: optional `(B, G)` decisions to apply instead of the gates' own (the gate
                networks are then not run, and not counted); hard (0/1) for compact.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            generator: optional `torch.Generator` for the Gumbel noise while training.
            policy: in eval, thresholds on the gate logits (one per gated block, in gate
                order; instead of `decide`'s rule) and an optional compute cap
                (`max_flops`, `max_blocks`, applied to given `gates` too). Not used in
                training.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        execution = resolve_execution(execution, self.training)
        if gates is not None:
            self._check_gates(gates, x.shape[0], execution)
        if policy is not None:
            policy.check(self.num_gated_blocks, "GatedModel", caps=BLOCK_CAPS)
        fixed, gate_flops, block_flops = self.block_costs(tuple(x.shape[1:]))
        every_block = self._cached_costs(tuple(x.shape[1:]))[3]  # a Python float: no tensor read while exported
        base = fixed + (0.0 if gates is not None else gate_flops)
        run = _Run(execution, self.decide, gates, generator)
        if policy is not None and not self.training:
            run.cuts = list(policy.thresholds)
            run.budget = BlockBudget.from_policy(policy, block_flops, base, "GatedModel")
        logits = self._run_model(x, run)
        decided = self._collect(run, x)
        compact = base + gated_flops(block_flops, decided)
        flops = compact if execution is Execution.COMPACT else torch.full_like(compact, base + every_block)
        decisions = decided.detach()
        out = DynamicOutput(
            logits=logits,
            flops=flops,
            decisions={"gates": decisions, "executed_fraction": decisions.mean(dim=1), "compact_flops": compact},
        )
        if run.budget is not None:
            out.decisions["forced_off"] = run.budget.forced_off(x.shape[0], decisions)
        if self.training and gates is None and self.rate_weight > 0:
            target = decided.new_full((decided.shape[1],), self.target_rate)
            out.aux_losses["target_rate"] = self.rate_weight * target_rate_loss(decided, target)
        return out

    def _run_model(self, x: Tensor, run: _Run, call: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        for block in self._blocks:
            block._run = run
        try:
            return (call or self.model)(x)
        finally:
            for block in self._blocks:
                block._run = None

    def _collect(self, run: _Run, x: Tensor) -> Tensor:
        missing = [self.gated_paths[i] for i in range(self.num_gated_blocks) if i not in run.decisions]
        if missing:
            raise ConfigError(f"gated blocks {missing} were not called by the model's forward")
        stacked = torch.stack([run.decisions[i] for i in range(self.num_gated_blocks)], dim=1)
        return stacked if stacked.is_floating_point() else stacked.to(x.dtype)

    def _check_gates(self, gates: Tensor, batch: int, execution: Execution) -> None:
        expected = (batch, self.num_gated_blocks)
        if tuple(gates.shape) != expected:
            raise ConfigError(f"gates must have shape (B, num_gated_blocks) = {expected}, got {tuple(gates.shape)}")
        if execution is Execution.COMPACT and not is_hard(gates):
            raise ConfigError("compact execution needs hard gates (every value exactly 0 or 1)")

    # ------------------------------------------------------------------ costs
    def block_costs(self, input_shape: Sequence[int]) -> tuple[float, float, Tensor]:
        """Per-sample FLOPs on a `input_shape` input, measured once per shape.

        Returns:
            `(fixed, gates, blocks)`: `fixed` what always runs but the gate networks,
            `gates` all the gate networks, `blocks` a `(G,)` float64 tensor, each gated
            block's cost.
        """
        fixed, gate_flops, blocks, _ = self._cached_costs(input_shape)
        return fixed, gate_flops, blocks.clone()

    def gate_logit_layers(self) -> list[nn.Linear]:
        """The output layer of each gate network, one logit per gated block, in gate order
        (`dynamicnets.inference.calibrate_gate_rate` / `calibrate_gate_policy` fit their
        thresholds through them).

        Raises:
            ConfigError: a gate that is not one of the library's (`"linear"`, `"mlp"`), whose
                logit layer is unknown; or an eval rule other than `logit > 0`
                (`decide.threshold` moved from 0.5), which shifted biases would not match.
        """
        if self.decide.threshold != 0.5 or not self.decide.hard_eval:
            raise ConfigError(f"GatedModel: gate calibration fits thresholds for the rule logit > 0, but "
                              f"decide.threshold is {self.decide.threshold} (hard_eval={self.decide.hard_eval}); "
                              "set it back to 0.5 and let the calibration move the cut")
        layers = []
        for block in self._blocks:
            if isinstance(block.gate, PooledLinearGate):
                layers.append(block.gate.fc)
            elif isinstance(block.gate, PooledMLPGate):
                layers.append(block.gate.fc2)
            else:
                raise ConfigError(
                    f"gated block {block.path!r}: its gate {type(block.gate).__name__} is not one of the library's "
                    "('linear', 'mlp'), so the layer producing its logit is unknown; pass thresholds of your own "
                    "at inference instead, model(x, policy=GatePolicy(thresholds))")
        return layers

    def model_changed(self) -> None:
        """Forget the measured costs; call it after changing the wrapped model's layers (a new
        classifier, say), since costs are measured once per input shape."""
        self._cost_cache.clear()

    def _cached_costs(self, input_shape: Sequence[int]) -> tuple[float, float, Tensor, float]:
        shape = tuple(int(s) for s in input_shape)
        costs = self._cost_cache.get(shape)
        if costs is None:
            with _disable_current_modes():
                costs = self._measure_costs(shape)
            self._cost_cache[shape] = costs
        return costs

    def full_flops(self, input_shape: Sequence[int]) -> float:
        """Per-sample FLOPs with every block run and every gate evaluated (the masked cost)."""
        fixed, gate_flops, blocks = self.block_costs(input_shape)
        return fixed + gate_flops + float(blocks.sum())

    def worst_case_flops(self, input_shape: Sequence[int], policy: GatePolicy | None = None) -> float:
        """The most per-sample FLOPs the compact inference of any input of `input_shape`
        can cost under `policy` (without a cap: every block run)."""
        fixed, gate_flops, blocks = self.block_costs(input_shape)
        if policy is not None:
            policy.check(self.num_gated_blocks, "GatedModel", caps=BLOCK_CAPS)
            BlockBudget.from_policy(policy, blocks, fixed + gate_flops, "GatedModel")  # checks the cap
        return worst_case_blocks(blocks, fixed + gate_flops, policy)

    def _measure_costs(self, shape: tuple[int, ...]) -> tuple[float, float, Tensor, float]:
        with torch.no_grad(), masked_dynamic_layers(self.model), meta_tensors(self.model) as dtype, \
                flop_counter() as counter:
            x = torch.empty((1, *shape), device="meta", dtype=dtype)
            ones = torch.ones((1, self.num_gated_blocks), device="meta", dtype=dtype)
            run = _Run(Execution.MASKED, self.decide, ones)
            self._run_model(x, run)
        block_flops, gate_flops = [], 0
        for i, block in enumerate(self._blocks):
            block_flops.append(flops_and_shape(block.block, run.shapes[i])[0])
            gate_flops += flops_and_shape(block.gate, run.shapes[i])[0]
        fixed = counter.get_total_flops() - sum(block_flops)
        return float(fixed), float(gate_flops), torch.tensor(block_flops, dtype=torch.float64), float(sum(block_flops))


def gate_residual_blocks(
    model: nn.Module,
    *,
    input_shape: Sequence[int],
    block_types: Sequence[type] | type | None = None,
    paths: Sequence[str] | None = None,
    gate: str | GateFactory = "mlp",
    gate_hidden: int = 16,
    gate_bias_init: float = 2.0,
    reshaping: str = "error",
    tau: float = 1.0,
    threshold: float = 0.5,
    target_rate: float = 0.6,
    rate_weight: float = 1.0,
) -> GatedModel:
    """Gate the shape-preserving blocks of `model` so each sample runs only some of them.

    Args:
        model: the user's model, `(B, *input_shape) -> logits`; modified in place (each
            chosen block becomes a `GatedBlock` holding it, its keys gaining `.block`).
        input_shape: per-sample input shape, e.g. `(3, 32, 32)` (to find block shapes).
        block_types: gate every module of these types (the outermost ones).
        paths: or gate the modules with these names (`model.get_submodule` paths).
        gate: `"mlp"` (pool -> linear -> ReLU -> linear, ConvNet-AIG's gate), `"linear"`
            (pool -> linear, SkipNet's feed-forward gate), or a factory
            `(per-sample block input shape) -> module (B, *S) -> (B,)` logits.
        gate_hidden: hidden width of the `"mlp"` gate.
        gate_bias_init: initial gate bias (2.0: blocks start about 88% executed).
        reshaping: what to do with a chosen block whose output shape differs from its
            input's: `"error"` (raise) or `"keep"` (leave it ungated).
        tau, threshold: of the `GumbelSigmoidGate` deciding from the logits.
        target_rate, rate_weight: the target execution rate and the weight of its loss.

    Returns:
        `GatedModel` wrapping `model`.

    Raises:
        ConfigError: neither or both of `block_types` / `paths`; a path that does not
            exist or a block the forward does not call; a block that is not
            shape-preserving (with `reshaping="error"`), named by its path; no block left.
    """
    if (block_types is None) == (paths is None):
        raise ConfigError("gate_residual_blocks: give exactly one of block_types or paths")
    if reshaping not in RESHAPING:
        raise ConfigError(f"gate_residual_blocks: reshaping must be one of {RESHAPING}, got {reshaping!r}")
    if isinstance(gate, str) and gate not in GATES:
        raise ConfigError(f"gate_residual_blocks: gate must be one of {GATES} or a callable, got {gate!r}")
    input_shape = tuple(int(s) for s in input_shape)
    candidates = _candidates(model, block_types, paths)
    shapes = _block_shapes(model, candidates, input_shape)
    chosen = []
    for path in candidates:
        if path not in shapes:
            raise ConfigError(f"gate_residual_blocks: block {path!r} is not called by the model's forward")
        in_shape, out_shape = shapes[path]
        if in_shape != out_shape:
            if reshaping == "keep":
                continue
            module = model.get_submodule(path)
            raise ConfigError(
                f"gate_residual_blocks: block {path!r} ({type(module).__name__}) maps per-sample shape "
                f"{in_shape} to {out_shape}; only shape-preserving blocks can be skipped (leave it out, "
                f"or pass reshaping='keep')"
            )
        chosen.append(path)
    if not chosen:
        raise ConfigError("gate_residual_blocks: no shape-preserving block to gate")
    for path in chosen:
        block = model.get_submodule(path)
        net = _make_gate(gate, shapes[path][0], gate_hidden, gate_bias_init)
        reference = next(block.parameters(), None)
        if reference is not None:
            net = net.to(device=reference.device, dtype=reference.dtype)
        _replace(model, path, GatedBlock(block, net, path))
    return GatedModel(
        model, chosen, input_shape=input_shape, tau=tau, threshold=threshold,
        target_rate=target_rate, rate_weight=rate_weight,
    )


def _candidates(model: nn.Module, block_types, paths) -> list[str]:
    if paths is not None:
        names = dict(model.named_modules())
        for path in paths:
            if path not in names or path == "":
                raise ConfigError(f"gate_residual_blocks: model has no submodule {path!r}")
        return list(paths)
    types = tuple(block_types) if isinstance(block_types, (list, tuple)) else (block_types,)
    found: list[str] = []
    for name, module in model.named_modules():
        if name and isinstance(module, types) and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    if not found:
        raise ConfigError(f"gate_residual_blocks: model has no module of type {[t.__name__ for t in types]}")
    return found


def _block_shapes(model: nn.Module, paths: list[str], input_shape: tuple[int, ...]) -> dict:
    """`{path: (per-sample input shape, per-sample output shape)}` from one meta forward."""
    shapes: dict[str, tuple] = {}

    def recorder(path):
        def hook(module, args, output):
            if args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
                shapes[path] = (tuple(args[0].shape[1:]), tuple(output.shape[1:]))
        return hook

    handles = [model.get_submodule(p).register_forward_hook(recorder(p)) for p in paths]
    try:
        with _disable_current_modes(), torch.no_grad(), masked_dynamic_layers(model), meta_tensors(model) as dtype:
            model(torch.empty((2, *input_shape), device="meta", dtype=dtype))
    except (RuntimeError, ValueError, TypeError) as error:
        raise ConfigError(
            f"gate_residual_blocks: the model does not run on a per-sample input of shape {input_shape}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _make_gate(gate, in_shape: tuple[int, ...], hidden: int, bias_init: float) -> nn.Module:
    if callable(gate) and not isinstance(gate, str):
        return gate(in_shape)
    if gate == "mlp":
        return PooledMLPGate(in_shape[0], hidden, bias_init=bias_init)
    return PooledLinearGate(in_shape[0], bias_init=bias_init)


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, module)
