"""The static pieces of a dynamic model, each a module that exports as one graph.

A dynamic model is split at its decisions: what runs between two decisions has static
shapes (a batch of any size in, the same batch out), so it exports to `torch.export` or
ONNX with one dynamic dimension, the batch. Every piece here takes and returns flat tuples
of tensors, because exported graphs and ONNX sessions speak in flat tensor lists: a
model state that is a list of tensors (MSDNet's feature maps, one per scale) is flattened
on the way out and rebuilt on the way in, and `StateLayout` records how.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import counted_flops


@dataclass(frozen=True)
class StateLayout:
    """How a model state maps to a flat tensor list: one tensor, or a list of `count`."""

    is_list: bool
    count: int

    @classmethod
    def of(cls, state, where: str) -> StateLayout:
        """The layout of `state` (a tensor or a flat list/tuple of tensors).

        Raises:
            ConfigError: naming `where`, for anything deeper or not a tensor.
        """
        if isinstance(state, Tensor):
            return cls(False, 1)
        if isinstance(state, (list, tuple)) and state and all(isinstance(t, Tensor) for t in state):
            return cls(True, len(state))
        raise ConfigError(
            f"{where}: a state between decisions must be a tensor or a flat list of tensors to be "
            f"exported, got {type(state).__name__}"
        )

    def flatten(self, state) -> tuple[Tensor, ...]:
        return tuple(state) if self.is_list else (state,)

    def rebuild(self, tensors: tuple[Tensor, ...]):
        return list(tensors) if self.is_list else tensors[0]

    def to_dict(self) -> dict:
        return {"is_list": self.is_list, "count": self.count}

    @classmethod
    def from_dict(cls, data: dict) -> StateLayout:
        return cls(bool(data["is_list"]), int(data["count"]))


class ExitSegment(nn.Module):
    """Stage `k` of a multi-exit model: `(*state_in, [x]) -> (*state_out)`.

    Args:
        model: a `MultiExit` model in eval mode.
        k: the exit index; the segment runs what lies between exit `k - 1` and exit `k`.
        state_in: layout of the state exit `k - 1` read (None for `k = 0`).
        state_out: layout of the state exit `k` reads.
        takes_input: whether the segment reads the network input `x` (always for `k = 0`).
    """

    def __init__(self, model: nn.Module, k: int, state_in: StateLayout | None, state_out: StateLayout,
                 takes_input: bool) -> None:
        super().__init__()
        self.model, self.k = model, k
        self.state_in, self.state_out, self.takes_input = state_in, state_out, takes_input

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        count = 0 if self.state_in is None else self.state_in.count
        state = None if self.state_in is None else self.state_in.rebuild(tensors[:count])
        x = tensors[count] if self.takes_input else None
        return self.state_out.flatten(self.model.run_segment(self.k, state, x))


class ExitHead(nn.Module):
    """Exit `k` of a multi-exit model: `(*state) -> logits (n, C)`."""

    def __init__(self, model: nn.Module, k: int, state: StateLayout) -> None:
        super().__init__()
        self.model, self.k, self.state = model, k, state

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.model.exit_logits(self.k, self.state.rebuild(tensors))


class Chain(nn.Module):
    """Modules run one after the other on one tensor: `(n, *S) -> (n, *S')`."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, x: Tensor) -> Tensor:
        for part in self.parts:
            x = part(x)
        return x


class GateScore(nn.Module):
    """A gate network as a graph: block input `(n, C, H, W)` -> logit `(n,)`."""

    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        return self.gate(x).reshape(-1)


class AtWidth(nn.Module):
    """A slimmable network at one fixed width: `(n, C, H, W) -> logits (n, num_classes)`.

    The slimmable layers slice their weights for `width`; exported, the graph holds only
    that width's channels.
    """

    def __init__(self, backbone: nn.Module, width: float) -> None:
        super().__init__()
        self.backbone, self.width = backbone, float(width)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone.forward_logits(x, self.width)


class WidthScores(nn.Module):
    """DS-Net's gate as a graph: `(n, C, H, W) -> (n, num widths)` width scores."""

    def __init__(self, dsnet: nn.Module) -> None:
        super().__init__()
        self.dsnet = dsnet

    def forward(self, x: Tensor) -> Tensor:
        return self.dsnet.gate_logits(x)


class AtResolution(nn.Module):
    """A dynamic-resolution network at one resolution: `(n, C, H, W)` -> logits `(n, num_classes)`
    (resized to resolution `index` inside the graph, then its trunk with that resolution's
    norms, pooling and the classifier)."""

    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        self.model, self.index = model, int(index)

    def forward(self, x: Tensor) -> Tensor:
        return self.model.backbone.head(self.model.pooled_at(x, self.index)[..., None, None])


class ResolutionScores(nn.Module):
    """A dynamic-resolution network's predictor: `(n, C, H, W) -> (n, R)` resolution logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.resolution_logits(x)


class WholeModel(nn.Module):
    """A model with no decision between graphs, as one graph: `(n, *S)` -> `(logits (n, C),
    *decisions)` (a plain network returning a tensor: `(logits,)`), the tensors of `out.decisions` named by `keys`, in that order (a spatial
    transformer's `theta (n, 2, 3)`: the glimpse is sampled inside the graph). `policy`, when
    given, is passed to every call (a token-pruning transformer's keep-ratio `TokenPolicy`), and
    so is `execution` (a pixel-level spatial model's `"masked"` forward)."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...], policy=None, execution: str | None = None) -> None:
        super().__init__()
        self.model, self.keys, self.policy, self.execution = model, tuple(keys), policy, execution

    def run(self, x: Tensor):
        """The wrapped model's own output for `x`, called with the fixed policy and execution."""
        kwargs = {} if self.policy is None else {"policy": self.policy}
        if self.execution is not None:
            kwargs["execution"] = self.execution
        return self.model(x, **kwargs)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.run(x)
        if isinstance(out, Tensor):  # a plain network of the user's: its logits
            return (out,)
        return (out.logits, *(out.decisions[k] for k in self.keys))


def as_tuple(out) -> tuple[Tensor, ...]:
    """A graph's result as a tuple of tensors."""
    if isinstance(out, Tensor):
        return (out,)
    return tuple(out)


@torch.no_grad()
def per_sample_flops(module: nn.Module, example: tuple[Tensor, ...]) -> float:
    """Per-sample FLOPs of `module` on `example` (a batch of `n`), counted like `FlopCounterMode`."""
    return counted_flops(module, *example) / example[0].shape[0]
