"""`GatedResNet`: a CIFAR ResNet whose residual blocks are skipped per sample.

The base of SkipNet, ConvNet-AIG and BlockDrop. It owns the backbone (`CifarResNet`, so
its `state_dict` keys and FLOPs are those of the static ResNet under `backbone.`) and the
execution; the subclasses own the gates and their losses.

Which blocks are gated: every block except the first of each stage. The first block of a
stage changes the resolution and width (its shortcut is a strided 1x1 convolution), so
skipping it cannot be an identity; SkipNet and ConvNet-AIG execute those blocks too. A
depth-`6n + 2` network has `3 (n - 1)` gated blocks (51 of the 54 in ResNet-110); the gate
index runs stage by stage, block by block.

Per-sample FLOPs (`DynamicOutput.flops`) are what ran: the stem, the first block of each
stage, the head, every gate network that was evaluated (on every sample), and

- `compact`: the gated blocks each sample executed;
- `masked`: every gated block (the masked path computes them all, then mixes).

`decisions["compact_flops"]` holds, in both executions, what the compact path costs for
the same decisions (for soft gates the gate-weighted cost).

Models whose eval gate is a threshold on a logit of the pooled block input (SkipNet,
ConvNet-AIG) run compact inference through `run_scored`, not `run_blocks`: the same
decisions and outputs, bit for bit, with less per-block work around the gate (no module
calls, and at batch 1 one Python `if` per block instead of gate tensors and gathers). At
batch 1 a ResNet-110 block costs a few hundred microseconds, so those few microseconds
per gate decide whether skipping half the blocks halves the time.

Compute cap (a bounded worst case): a `GatePolicy` with `max_flops` and/or `max_blocks`
bounds every sample's cost at inference, whatever its gates decide (all on, for an input
crafted to slow the network down). Greedy in block order, a gate that would take its
sample over the cap is forced off (`dynamicnets.gates.block_budget`); the cap applies to
the gates' own decisions and to decisions given with `gates=`, in both executions, and
`decisions["forced_off"] (B, G)` shows which gates it turned off. `compact_flops` then
never exceeds `max_flops`; so does `flops` in compact execution (masked execution, the
reference, computes every block whatever the decisions, and says so in `flops`).
`worst_case_flops(input_shape, policy)` is the bound a policy guarantees.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import islice

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...gates.block_budget import CAPS as BLOCK_CAPS, BlockBudget, worst_case_blocks
from ...gates.thresholds import GatePolicy
from ...layers.gated_block import gated_flops, is_hard, run_gated
from ...outputs import DynamicOutput
from .._api import ClassifierApi
from ..static._checks import check_input_shape, require_positive
from ..static.resnet_cifar import CifarResNet
from ...gates.block_gates import Scorer, global_pool, pool_count

# decide(gated index, stage, block input (B, C, H, W)) -> gate (B,)
Decide = Callable[[int, int, Tensor], Tensor]


class GatedResNet(ClassifierApi, nn.Module):
    """CIFAR ResNet of depth `6n + 2` (`n >= 2`) with per-sample gates on `3 (n - 1)` blocks.

    Args:
        name: the registered model name (for error messages).
        depth: `6n + 2` with `n >= 2` (14, 20, 32, 56, 110, ...).
        num_classes, in_chans, width: as for `CifarResNet`.

    Attributes:
        backbone: the `CifarResNet` (stem, stages, head).
        gated_blocks: `(stage, block)` of each gated block, in gate order.
        num_gated_blocks: `3 (n - 1)`.
        gate_chans: channels of each gated block's input, in gate order.
        default_input_shape: `(in_chans, 32, 32)`.

    Classifier API (`dynamicnets.models.ClassifierApi`): the backbone's head and
    classifier. `forward_features(x, **kwargs)` takes `forward`'s keyword arguments and
    returns the features `(B, 4 width, H/4, W/4)` of that forward, with its gate
    decisions (it runs the forward: gates and blocks are interleaved).
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)
    head_path = "backbone.head"
    classifier_paths = ("backbone.head.fc",)

    def __init__(
        self,
        name: str,
        depth: int,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        require_positive(name, depth=depth, num_classes=num_classes, in_chans=in_chans, width=width)
        if (depth - 2) % 6 != 0 or depth < 14:
            raise ConfigError(
                f"model {name!r}: depth must be 6n + 2 with n >= 2 (14, 20, 32, 56, 110, ...) so "
                f"that every stage has a block to gate, got {depth}"
            )
        self.name = name
        self.backbone = CifarResNet(depth, num_classes, in_chans, width, device=device, dtype=dtype)
        self.in_chans = in_chans
        self.default_input_shape = self.backbone.default_input_shape
        self.gated_blocks = [
            (s, b) for s, blocks in enumerate(self.backbone.stages) for b in range(1, len(blocks))
        ]
        self.num_gated_blocks = len(self.gated_blocks)
        self.gate_chans = [
            self.backbone.stages[s][b].conv1.conv.in_channels for s, b in self.gated_blocks
        ]
        # Costs depend on the input shape only; kept for the default shape (the forward
        # path of most calls), recomputed for any other.
        self._default_costs = self._compute_block_costs(self.default_input_shape)

    # ------------------------------------------------------------------ costs
    def block_costs(self, input_shape: tuple[int, ...]) -> tuple[int, Tensor]:
        """Per-sample FLOPs of the backbone on a `(in_chans, H, W)` input, split in two.

        Returns:
            `(fixed, gated)`: `fixed` (int) is the stem, the first block of each stage and
            the head; `gated` is a `(G,)` float64 tensor, the cost of each gated block.
        """
        if tuple(input_shape) == self.default_input_shape:
            fixed, gated = self._default_costs
            return fixed, gated.clone()
        return self._compute_block_costs(input_shape)

    def classifier_changed(self) -> None:
        """Recompute the kept default-shape costs: the head's cost changed."""
        self._default_costs = self._compute_block_costs(self.default_input_shape)

    def _compute_block_costs(self, input_shape: tuple[int, ...]) -> tuple[int, Tensor]:
        parts = self.backbone.cost_breakdown(input_shape)
        fixed = parts["stem"] + parts["head"] + sum(costs[0] for costs in parts["stages"])
        gated = [parts["stages"][s][b] for s, b in self.gated_blocks]
        return fixed, torch.tensor(gated, dtype=torch.float64)

    @torch.no_grad()
    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs with every gated block run (and every gate evaluated) on a
        `(in_chans, H, W)` input: what the masked execution computes."""
        param = next(self.parameters())
        x = torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype)
        return float(self(x, execution="masked").flops[0])

    # -------------------------------------------------------------- execution
    def resolve_execution(self, execution: ExecutionLike) -> Execution:
        """The execution to use: see `dynamicnets.execution.resolve_execution`."""
        return resolve_execution(execution, self.training)

    def check_input(self, x: Tensor) -> None:
        """Raise `ConfigError` unless `x` is `(B, in_chans, H, W)`."""
        check_input_shape(self.name, tuple(x.shape[1:]), self.in_chans, spatial_dims=2)

    def check_gates(self, gates: Tensor, batch: int, execution: str) -> Tensor:
        """Validate user-given decisions `(B, G)`; hard ones are needed for `compact`."""
        expected = (batch, self.num_gated_blocks)
        if tuple(gates.shape) != expected:
            raise ConfigError(
                f"model {self.name!r}: gates must have shape (B, num_gated_blocks) = {expected}, "
                f"got {tuple(gates.shape)}"
            )
        if execution == "compact" and not is_hard(gates):
            raise ConfigError(
                f"model {self.name!r}: compact execution needs hard gates (0 or 1), got soft values"
            )
        return gates

    def run_blocks(
        self, x: Tensor, decide: Decide, execution: str, *, validate: bool = True,
        budget: BlockBudget | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Stem and stages, each gated block run on the samples `decide` turns on.

        Args:
            x: `(B, in_chans, H, W)` input.
            decide: `(gate index, stage, block input (B, C, h, w)) -> (B,)` gate values
                (float, or bool for hard ones), called once per gated block, in order.
            execution: `"masked"` or `"compact"`.
            validate: check that the gates are hard before a compact run (skip it when
                `decide` returns comparisons).
            budget: a compute cap applied to each decision (`BlockBudget.admit`).

        Returns:
            `(features (B, 4 width, ceil(H/4), ceil(W/4)), gates (B, G))`, the gates as
            floats.
        """
        inplace = not torch.is_grad_enabled()  # the block inputs here are our own activations
        x = self.backbone.stem(x)
        gates = []
        for s, blocks in enumerate(self.backbone.stages):
            x = blocks[0](x)
            for b in range(1, len(blocks)):
                gate = decide(len(gates), s, x)
                if budget is not None:
                    gate = budget.admit(len(gates), gate)
                x = run_gated(blocks[b], x, gate, execution, validate=validate, inplace=inplace)
                gates.append(gate)
        stacked = torch.stack(gates, dim=1)
        return x, stacked if stacked.is_floating_point() else stacked.to(x.dtype)

    def gate_thresholds(self, policy: GatePolicy | None) -> list[float]:
        """Per gated block, the threshold its gate logit must exceed at inference: the
        policy's (checked: one per gated block, caps `max_flops` / `max_blocks` at most),
        or 0 (`sigmoid > 0.5`) without one."""
        if policy is None:
            return [0.0] * self.num_gated_blocks
        return list(policy.check(self.num_gated_blocks, f"model {self.name!r}", caps=BLOCK_CAPS).thresholds)

    def decision_flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs of every gate evaluation on a `(in_chans, H, W)` input (the
        subclasses' `gate_flops()`; BlockDrop's policy network depends on the input size)."""
        return self.gate_flops()

    def block_budget(self, policy: GatePolicy | None, x: Tensor, gate_flops: float) -> BlockBudget | None:
        """The compute cap of `policy` for the batch `x` (None in training, or without a cap).

        Args:
            policy: the inference policy (checked).
            x: `(B, in_chans, H, W)` input (for its shape).
            gate_flops: per-sample FLOPs of the gate evaluations this forward pays.

        Raises:
            ConfigError: `max_flops` below the cost with every gated block skipped.
        """
        if self.training or policy is None:
            return None
        self.gate_thresholds(policy)  # checks the thresholds and which caps are set
        if not policy.caps:
            return None
        fixed, costs = self.block_costs(tuple(x.shape[1:]))
        return BlockBudget.from_policy(policy, costs, fixed + gate_flops, f"model {self.name!r}")

    def worst_case_flops(self, input_shape: tuple[int, ...], policy: GatePolicy | None = None) -> float:
        """The most per-sample FLOPs the compact inference of any `(in_chans, H, W)` input
        can cost under `policy` (without a cap: every gated block run)."""
        fixed, costs = self.block_costs(tuple(input_shape))
        base = fixed + self.decision_flops(tuple(input_shape))
        if policy is not None:  # check the policy and its cap
            self.gate_thresholds(policy)
            BlockBudget.from_policy(policy, costs, base, f"model {self.name!r}")
        return worst_case_blocks(costs, base, policy)

    def run_scored(self, x: Tensor, scorers: Sequence[Scorer], thresholds: Sequence[float] | None = None,
                   budget: BlockBudget | None = None) -> tuple[Tensor, Tensor]:
        """Compact inference with threshold gates: each gated block runs on the samples
        whose gate logit, scored from the block's pooled input, is `> 0`. The decisions
        and outputs of `run_blocks` in `compact` with `decide = gate(h) > 0`, bit for bit,
        for less work per block.

        A batch of one sample takes one Python decision per block (`if logit > 0: run
        the block`): no gate tensor, no gather, no write-back; after a skipped block the
        next gate reads the same input, so its pooled features are reused. A larger batch
        goes through `run_gated` (all on: no gather; all off: no block call; else gather
        and write back).

        Args:
            x: `(B, in_chans, H, W)` input.
            scorers: one per gated block, in gate order: `global_pool(block input)`
                `(B, C) -> (B, 1)` logits (see `dynamicnets.gates.block_gates`); they must not modify
                their argument (it may be reused).
            thresholds: per gated block, the cut the logit must exceed (default 0).
            budget: a compute cap applied to each decision (`BlockBudget`).

        Returns:
            `(features (B, 4 width, ceil(H/4), ceil(W/4)), gates (B, G))`, the gates as
            0/1 in `x`'s dtype.
        """
        single, inplace = x.shape[0] == 1, not torch.is_grad_enabled()
        scores = iter(scorers)
        cuts = iter([0.0] * len(scorers) if thresholds is None else thresholds)
        decisions: list = []  # bools (batch of 1) or (B,) bool tensors
        x = self.backbone.stem(x)
        for blocks in self.backbone.stages:
            x = blocks[0](x)
            count, pooled = pool_count(x), None
            for block in islice(blocks, 1, None):
                if pooled is None:  # else the last block was skipped: same input, same pool
                    pooled = global_pool(x, count)
                logit, cut = next(scores)(pooled), next(cuts)
                if single:
                    on = logit.item() > cut  # the one sync of the block
                    if budget is not None:
                        on = budget.admit_one(len(decisions), on)
                    if on:
                        x, pooled = block(x), None
                else:
                    on = logit.view(-1) > cut
                    if budget is not None:
                        on = budget.admit(len(decisions), on)
                    x = run_gated(block, x, on, "compact", validate=False, inplace=inplace)
                    pooled = None
                decisions.append(on)
        if single:
            return x, torch.tensor([decisions], dtype=x.dtype, device=x.device)
        return x, torch.stack(decisions, dim=1).to(x.dtype)

    def scored_output(self, x: Tensor, scorers: Sequence[Scorer], gate_flops: int,
                      thresholds: Sequence[float] | None = None,
                      budget: BlockBudget | None = None) -> DynamicOutput:
        """`run_scored`, the head and `make_output`: a model's compact eval forward.

        Args:
            x: `(B, in_chans, H, W)` input.
            scorers: as for `run_scored`.
            gate_flops: per-sample FLOPs of all the gate evaluations.
            thresholds, budget: as for `run_scored`.

        Returns:
            `DynamicOutput` as from `make_output` (execution `"compact"`).
        """
        features, gates = self.run_scored(x, scorers, thresholds, budget)
        return self.make_output(x, self.backbone.head(features), gates, "compact", gate_flops, budget)

    def decided_output(self, x: Tensor, gates: Tensor, execution: str,
                       policy: GatePolicy | None) -> DynamicOutput:
        """The forward with decisions given (`forward(x, gates=...)`): checked, capped by
        `policy`'s compute cap (in eval), run; the gate networks are not evaluated.

        Args:
            x: `(B, in_chans, H, W)` input.
            gates: `(B, G)` decisions.
            execution: `"masked"` or `"compact"`.
            policy: the inference policy, or None.

        Returns:
            `DynamicOutput` as from `make_output`.
        """
        gates = self.check_gates(gates, x.shape[0], execution)
        budget = self.block_budget(policy, x, 0)
        if budget is not None:
            gates = budget.apply(gates)
        logits = self.run_decided(x, gates, execution)
        return self.make_output(x, logits, gates, execution, 0, budget)

    def run_decided(self, x: Tensor, gates: Tensor, execution: str) -> Tensor:
        """Run the network with hard decisions made beforehand (checked by `check_gates`
        for `compact`).

        Args:
            x: `(B, in_chans, H, W)` input.
            gates: `(B, G)` decisions.
            execution: `"masked"` or `"compact"`.

        Returns:
            logits `(B, num_classes)`.
        """
        if execution == "masked" or (torch.is_grad_enabled() and gates.requires_grad):
            features, _ = self.run_blocks(x, lambda i, s, h: gates[:, i], execution)
            return self.backbone.head(features)
        # One look at the decisions up front: blocks nobody runs cost no tensor op at all,
        # blocks everybody runs need no gather.
        counts = (gates != 0).sum(dim=0).tolist()
        batch, inplace = x.shape[0], not torch.is_grad_enabled()
        x = self.backbone.stem(x)
        i = 0
        for blocks in self.backbone.stages:
            x = blocks[0](x)
            for block in blocks[1:]:
                if counts[i] == batch:
                    x = block(x)
                elif counts[i] > 0:
                    x = run_gated(block, x, gates[:, i], "compact", validate=False, inplace=inplace)
                i += 1
        return self.backbone.head(x)

    def make_output(
        self,
        x: Tensor,
        logits: Tensor,
        gates: Tensor,
        execution: str,
        gate_flops: int,
        budget: BlockBudget | None = None,
    ) -> DynamicOutput:
        """A `DynamicOutput` with per-sample FLOPs and the decisions every gated model reports.

        Args:
            x: the `(B, in_chans, H, W)` input (for its shape).
            logits: `(B, num_classes)`.
            gates: `(B, G)` decisions that were applied.
            execution: how the blocks ran.
            gate_flops: per-sample FLOPs of the gate networks that were evaluated.
            budget: the compute cap that capped `gates`, if any.

        Returns:
            `DynamicOutput` with `flops (B,)` and `decisions`: `gates (B, G)`,
            `executed_fraction (B,)` (mean gate), `compact_flops (B,)`, and with a cap
            `forced_off (B, G)` (1 where the cap turned a gate off).
        """
        fixed, costs = self.block_costs(tuple(x.shape[1:]))
        base = float(fixed + gate_flops)
        compact = base + gated_flops(costs, gates)
        if execution == "compact":
            flops = compact
        else:
            flops = torch.full_like(compact, base) + costs.sum().to(compact)  # no host sync: exportable
        decided = gates.detach()
        decisions = {"gates": decided, "executed_fraction": decided.mean(dim=1), "compact_flops": compact}
        if budget is not None:
            decisions["forced_off"] = budget.forced_off(x.shape[0], decided)
        return DynamicOutput(logits=logits, flops=flops, decisions=decisions)
