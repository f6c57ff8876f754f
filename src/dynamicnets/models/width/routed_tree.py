"""`RoutedTree`: the forward shared by the tree models (execution, decisions, output).

A subclass owns the nodes and implements the two executions of one set of weights:

- `run_masked(inputs, decisions) -> (log-probabilities (B, C), router logits
  (B, 2^d - 1), routing values used (B, 2^d - 1))`: every node on the whole batch;
- `run_compact(inputs, decisions) -> (log-probabilities (B, C), leaf (B,), path (B, d),
  routing (B, 2^d - 1))`: one root-to-leaf path per sample (routing -1 at the nodes a
  sample did not visit);

and their costs, `path_flops(shape)` and `all_nodes_flops(shape)`, and `prepare(x) ->
(inputs, per-sample shape)` (input checks). `decisions` are hard `(B, 2^d - 1)` routing
decisions that replace the routers' own (heap order, see `binary_tree`).
"""
from __future__ import annotations

from torch import Tensor, nn

from ...errors import ConfigError
from ...outputs import DynamicOutput, constant_flops
from ...gates.thresholds import GatePolicy
from ...execution import Execution, resolve_execution
from .._api import ClassifierApi
from .binary_tree import balance_penalty, check_decisions, check_depth, follow


class RoutedTree(ClassifierApi, nn.Module):
    """Base of the binary-tree models (see the module docstring).

    Args:
        name: the registered model name (for error messages).
        depth: `d >= 1`.
        penalty_strength: `>= 0`, root weight of the routing-balance aux loss (0 = off).
        penalty_decay: in `(0, 1]`, its factor per level.

    Shapes:
        `forward(x (B, ...), execution=None, decisions=None (B, 2^d - 1))` ->
        `DynamicOutput` with `logits (B, C)` (log-probabilities), `flops (B,)`,
        `decisions["leaf"] (B,)`, `decisions["path"] (B, d)` (inner node per level),
        `decisions["routing"] (B, 2^d - 1)` (masked: the routing values used; compact:
        0/1 at the visited nodes, -1 at the others) and, masked with a penalty,
        `aux_losses["routing_balance"]`. Masked `leaf`/`path` are the greedy path (the
        more probable child at every node), the one compact execution takes.

    Classifier API (`dynamicnets.models.ClassifierApi`): a tree has no feature extractor
    apart from its routing, so it is all head. `forward_features(x)` is the input as the
    tree reads it (`prepare`), `num_features` its size along dim 1, and
    `forward_head(features, execution=None, decisions=None)` the whole routed tree, with
    `forward`'s execution and decisions arguments (the execution changes the result: a
    soft tree mixes every leaf when masked and follows one path when compact).
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def forward_features(self, x: Tensor) -> Tensor:
        """The input as the tree reads it: `prepare(x)`'s tensor."""
        return self.prepare(x)[0]

    def forward_head(
        self, features: Tensor, execution: str | None = None, decisions: Tensor | None = None
    ) -> Tensor:
        """`forward(features, execution, decisions).logits`: `(B, C)` log-probabilities."""
        return self(features, execution, decisions).logits

    def __init__(self, name: str, depth: int, penalty_strength: float, penalty_decay: float) -> None:
        super().__init__()
        self.name = name
        self.depth = check_depth(name, depth)
        self.num_inner = 2**depth - 1
        if not penalty_strength >= 0:
            raise ConfigError(f"model {name!r}: penalty_strength must be >= 0, got {penalty_strength!r}")
        if not 0 < penalty_decay <= 1:
            raise ConfigError(f"model {name!r}: penalty_decay must be in (0, 1], got {penalty_decay!r}")
        self.penalty_strength = float(penalty_strength)
        self.penalty_decay = float(penalty_decay)

    def forward(
        self, x: Tensor, execution: str | None = None, decisions: Tensor | None = None,
        policy: GatePolicy | None = None,
    ) -> DynamicOutput:
        """Route every sample to one leaf (compact) or mix the leaves (masked).

        Args:
            x: the input (see the model).
            execution: `None` (masked in training, compact in eval), `"masked"` or `"compact"`.
            decisions: optional hard `(B, 2^d - 1)` routing decisions.
            policy: hard routing at inference, one threshold per inner node (breadth-first):
                a sample goes right where the router logit is `> threshold`. Compact uses
                0 without a policy; masked with a policy mixes the leaves by these hard
                decisions instead of the soft (or trained) routing.

        Returns:
            `DynamicOutput` with `decisions` `leaf (B,)`, `path (B, d)`, `routing`.
        """
        execution = resolve_execution(execution, self.training)
        inputs, shape = self.prepare(x)
        if decisions is not None:
            check_decisions(self.name, decisions, x.shape[0], self.depth)
        cuts = None if policy is None else policy.check(self.num_inner, f"model {self.name!r}").thresholds
        aux_losses = {}
        if execution == "compact":
            logits, leaf, path, routing = self.run_compact(inputs, decisions, cuts)
            flops = self.path_flops(shape)
        else:
            logits, router_logits, routing = self.run_masked(inputs, decisions, cuts)
            leaf, path = follow(routing.detach() > 0.5, self.depth)
            flops = self.all_nodes_flops(shape)
            if self.penalty_strength > 0:
                aux_losses["routing_balance"] = balance_penalty(
                    router_logits, self.depth, self.penalty_strength, self.penalty_decay
                )
        return DynamicOutput(
            logits=logits,
            decisions={"leaf": leaf, "path": path, "routing": routing},
            aux_losses=aux_losses,
            flops=constant_flops(flops, x.shape[0], x.device),
        )
