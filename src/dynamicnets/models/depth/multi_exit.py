"""`MultiExitNetwork`: a backbone of separately callable stages with exit heads.

The same class carries a backbone with intermediate classifiers (BranchyNet,
Shallow-Deep Networks, MSDNet) and a cascade of independent models (each model a
stage that starts again from the network input, its exit the identity on its logits).

Two execution modes share the weights (masked for training, compact for inference):

- `forward(x)`: static shapes, every stage and every exit on the whole batch; the
  training path (and the run-everything reference).
- `dynamicnets.inference.run_early_exit(model, x, policy)`: the compact path, which
  calls `run_segment` / `exit_logits` exit by exit and drops the samples that exit.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import _disable_current_modes

from ...errors import ConfigError
from ...outputs import DynamicOutput, constant_flops
from ...flops import flops_and_shape
from ...inference.executor import run_early_exit
from ...inference.policy import ExitPolicy
from .._api import ClassifierApi
from .exit_head import ExitHead
from .gradient_equilibrium import downstream_exit_counts, scale_state_gradient
from .tree import ShapeTree, State


class MultiExitNetwork(ClassifierApi, nn.Module):
    """Stages `0..S-1` run in order; exit `k` reads the output of stage `exit_after[k]`.

    Args:
        stages: `S` modules; stage `i` maps the previous stage's activations (a tensor
            or a list of tensors) to its own. Stage 0, and every stage listed in
            `restart_stages`, receives the network input instead.
        exits: `K` exit heads, each mapping activations to `(B, num_classes)` logits.
        exit_after: `K` increasing stage indices, the last one `S - 1`; default
            `0..S-1` (one exit after every stage, `K == S`).
        restart_stages: stages that start again from the network input (a cascade).
        gradient_equilibrium: rescale gradients at every exit's branch point so each
            trunk stage receives the mean, not the sum, of its downstream exits'
            gradients (see `gradient_equilibrium.py` for the exact factors). Only the
            backward pass changes.
        default_input_shape: canonical per-sample input shape, e.g. `(3, 32, 32)`.

    Returns (forward):
        `forward(x)`: `DynamicOutput` with `logits` of the last exit `(B, C)`, `exit_logits`
        (`K` tensors `(B, C)`, shallowest first) and `flops (B,)`: the per-sample cost of
        the whole pass (every stage and every exit head, `exit_costs(...)[-1]`).
        `forward(x, policy)` (eval mode, an `ExitPolicy`): real early exits, each sample's
        `logits (B, C)` from the exit it left at, `flops (B,)` what it ran and
        `decisions["exit_index"] (B,)`, as `inference.run_early_exit`.

    Classifier API (`dynamicnets.models.ClassifierApi`): `forward_features(x)` runs every
    stage (no exit head) and returns what the final exit reads (for an `ExitHead` on a
    multi-scale state, its scale); `forward_head` is the final exit; `get_classifier()`
    its linear layer; `reset_classifier` replaces the linear layer of every exit (an
    exit must be an `ExitHead`, an `nn.Linear` or an `nn.Sequential` ending in one).
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        exits: Sequence[nn.Module],
        exit_after: Sequence[int] | None = None,
        *,
        restart_stages: Sequence[int] = (),
        gradient_equilibrium: bool = False,
        default_input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if len(stages) == 0 or len(exits) == 0:
            raise ConfigError("a multi-exit network needs at least one stage and one exit")
        exit_after = list(range(len(stages))) if exit_after is None else [int(i) for i in exit_after]
        if len(exit_after) != len(exits):
            raise ConfigError(f"exit_after has {len(exit_after)} entries but there are {len(exits)} exits")
        if any(b <= a for a, b in zip(exit_after, exit_after[1:])) or exit_after[0] < 0:
            raise ConfigError(f"exit_after must be increasing stage indices >= 0, got {exit_after}")
        if exit_after[-1] != len(stages) - 1:
            raise ConfigError(
                f"the last exit must follow the last stage ({len(stages) - 1}), got exit_after={exit_after}"
            )
        restarts = sorted({int(r) for r in restart_stages})
        if any(not 0 < r < len(stages) for r in restarts):
            raise ConfigError(f"restart_stages must be stage indices in 1..{len(stages) - 1}, got {restarts}")
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)
        self.exit_after = tuple(exit_after)
        self.restart_stages = tuple(restarts)
        self.gradient_equilibrium = bool(gradient_equilibrium)
        self.default_input_shape = None if default_input_shape is None else tuple(default_input_shape)
        self._downstream = tuple(downstream_exit_counts(exit_after, set(restarts)))
        # per-sample input shape -> cost_breakdown (costs depend on the shape only)
        self._cost_cache: dict[tuple[int, ...], dict] = {}

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def _segment_stages(self, k: int) -> range:
        start = 0 if k == 0 else self.exit_after[k - 1] + 1
        return range(start, self.exit_after[k] + 1)

    def needs_input_after(self, k: int) -> bool:
        """Whether a stage after exit `k` restarts from the network input."""
        return any(r > self.exit_after[k] for r in self.restart_stages)

    def run_segment(self, k: int, state: State | None, x: Tensor) -> State:
        """Run the stages between exit `k - 1` and exit `k`.

        Args:
            k: exit index.
            state: activations after exit `k - 1` (`None` for `k = 0`), batch `n`.
            x: the network input of the same `n` samples, `(n, *input_shape)`.

        Returns:
            activations that exit `k` reads, batch `n`.
        """
        for i in self._segment_stages(k):
            inputs = x if i == 0 or i in self.restart_stages else state
            state = self.stages[i](inputs)
        return state

    def exit_logits(self, k: int, state: State) -> Tensor:
        """`(n, C)` logits of exit `k` on the activations `run_segment(k, ...)` returned."""
        return self.exits[k](state)

    # ------------------------------------------------------------ classifier API
    def forward_features(self, x: Tensor) -> Tensor:
        """`(B, *input_shape) -> ` what the final exit reads, e.g. `(B, num_features, H', W')`."""
        state: State | None = None
        for k in range(self.num_exits):
            state = self.run_segment(k, state, x)
        last = self.exits[-1]
        return last.select(state) if isinstance(last, ExitHead) else state

    def forward_head(self, features: Tensor) -> Tensor:
        """The final exit on `forward_features`' output: `(B, num_classes)` logits."""
        last = self.exits[-1]
        return last.classify(features) if isinstance(last, ExitHead) else last(features)

    @property
    def classifier_paths(self) -> tuple[str, ...]:
        """The linear layer of every exit, shallowest first (`exits.k.fc` or `exits.k`)."""
        paths = []
        for k, head in enumerate(self.exits):
            if isinstance(head, ExitHead):
                paths.append(f"exits.{k}.fc")
            elif type(head) is nn.Linear:
                paths.append(f"exits.{k}")
            elif isinstance(head, nn.Sequential) and len(head) and type(head[-1]) is nn.Linear:
                paths.append(f"exits.{k}.{len(head) - 1}")
            else:
                raise ConfigError(
                    f"exit {k} is a {type(head).__name__}: the classifier API needs exits that are "
                    "ExitHead, nn.Linear or nn.Sequential modules ending in an nn.Linear"
                )
        return tuple(paths)

    @property
    def num_features(self) -> int:
        """Channels of what the final exit reads."""
        last = self.exits[-1]
        return last.in_chans if isinstance(last, ExitHead) else int(self.get_classifier().in_features)

    def classifier_changed(self) -> None:
        """Forget the measured costs: the exit heads changed."""
        self._cost_cache.clear()

    def forward(self, x: Tensor, policy: ExitPolicy | None = None) -> DynamicOutput:
        if policy is not None:  # eval mode: the compact early exits (`inference.run_early_exit`)
            return run_early_exit(self, x, policy).as_output()
        balance = self.gradient_equilibrium and torch.is_grad_enabled()
        state: State | None = None
        all_logits = []
        for k in range(self.num_exits):
            state = self.run_segment(k, state, x)
            n = self._downstream[k]
            if balance and n > 1:
                all_logits.append(self.exit_logits(k, scale_state_gradient(state, 1.0 / n)))
                state = scale_state_gradient(state, (n - 1) / n)
            else:
                all_logits.append(self.exit_logits(k, state))
        flops = self.exit_costs(tuple(x.shape[1:]))[-1]
        return DynamicOutput(
            logits=all_logits[-1], exit_logits=all_logits, flops=constant_flops(flops, x.shape[0], x.device)
        )

    def cost_breakdown(self, input_shape: Sequence[int]) -> dict:
        """Per-sample FLOPs of every stage and exit head on a `input_shape` input.

        Measured once per input shape and cached (modules the counter does not know are
        run on meta tensors under `FlopCounterMode`); the measuring is hidden from any
        `FlopCounterMode` (or other dispatch mode) active around the call, so an outer
        counter sees only the forward's own work.

        Returns:
            `{"stages": [int] * S, "exits": [int] * K}` (a fresh copy).
        """
        in_shape = tuple(int(s) for s in input_shape)
        parts = self._cost_cache.get(in_shape)
        if parts is None:
            with _disable_current_modes():
                parts = self._measure_costs(in_shape)
            self._cost_cache[in_shape] = parts
        return {"stages": list(parts["stages"]), "exits": list(parts["exits"])}

    def _measure_costs(self, in_shape: tuple[int, ...]) -> dict:
        expected = self.default_input_shape
        if expected is not None and (len(in_shape) != len(expected) or in_shape[0] != expected[0]):
            raise ConfigError(
                f"per-sample input shape {in_shape} does not fit this model: it takes {expected[0]} input "
                f"channels and {len(expected) - 1} spatial dims (e.g. {expected})"
            )
        stage_flops, exit_flops = [], []
        shape: ShapeTree = in_shape
        for k in range(self.num_exits):
            for i in self._segment_stages(k):
                flops, shape = flops_and_shape(self.stages[i], in_shape if i == 0 or i in self.restart_stages else shape)
                stage_flops.append(flops)
            exit_flops.append(flops_and_shape(self.exits[k], shape)[0])
        return {"stages": stage_flops, "exits": exit_flops}

    def exit_costs(self, input_shape: Sequence[int]) -> list[int]:
        """Cumulative per-sample FLOPs of a sample that leaves at each exit.

        A sample leaving at exit `k` ran every stage up to `exit_after[k]` and the heads
        of exits `0..k` (it was scored at each earlier exit and stayed).

        Args:
            input_shape: per-sample input shape, e.g. `(3, 32, 32)`.

        Returns:
            `K` ints, increasing; the last one is the cost of the whole `forward`.
        """
        parts = self.cost_breakdown(input_shape)
        costs, total = [], 0
        for k in range(self.num_exits):
            total += sum(parts["stages"][i] for i in self._segment_stages(k)) + parts["exits"][k]
            costs.append(total)
        return costs

    def flops(self, input_shape: Sequence[int]) -> int:
        """Per-sample FLOPs of the full pass (`forward`): `exit_costs(input_shape)[-1]`."""
        return self.exit_costs(input_shape)[-1]

    def reference_flops(self, input_shape: Sequence[int]) -> int:
        """Per-sample FLOPs of the static network this model stands for, which budget
        fractions and speedups are relative to: the full pass, or, for a cascade (stages
        that restart from the input), its last member alone (the stages from the last
        restart on and the final exit; a cascade's full pass runs every member)."""
        if not self.restart_stages:
            return self.flops(input_shape)
        parts = self.cost_breakdown(input_shape)
        return sum(parts["stages"][self.restart_stages[-1]:]) + parts["exits"][-1]

    def reference_forward(self, x: Tensor) -> Tensor:
        """Logits `(B, num_classes)` of that static network on `(B, *input_shape)` inputs."""
        if not self.restart_stages:
            return self(x).logits
        state: State = x
        for i in range(self.restart_stages[-1], len(self.stages)):
            state = self.stages[i](state)
        return self.exits[-1](state)
