"""Early exits on a user's own backbone: split it into stages, add an exit head after each.

`add_exits` builds a `MultiExitNetwork` from the user's stages (any modules, called in
order) and exit heads: a pooled linear classifier after each chosen stage, sized from the
stage's output (found by running the stages once on meta tensors), and the user's own
head as the last exit. The result trains with `dynamicnets.training.dynamic_loss` (every
exit's cross-entropy) and runs real early exits through `dynamicnets.inference.run`.
Costs are measured once per input shape and cached by the network.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from ..errors import ConfigError
from ..flops import flops_and_shape
from ..models.depth.multi_exit import MultiExitNetwork

# (per-sample shape of the features the exit reads, num_classes) -> exit head
ExitHeadFactory = Callable[[tuple[int, ...], int], nn.Module]


def pooled_linear_head(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Global average pool over the spatial dims, then a linear classifier.

    Args:
        shape: per-sample shape of the features, `(C, *spatial)` (or `(C,)`).
        num_classes: classifier outputs.

    Returns:
        a module `(B, C, *spatial) -> (B, num_classes)`.
    """
    channels, spatial = shape[0], len(shape) - 1
    if spatial == 0:
        return nn.Linear(channels, num_classes)
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}.get(spatial)
    if pool is None:
        raise ConfigError(f"pooled_linear_head: features of shape {shape} have {spatial} spatial dims, at most 3 supported")
    return nn.Sequential(pool(1), nn.Flatten(1), nn.Linear(channels, num_classes))


def add_exits(
    stages: Sequence[nn.Module],
    *,
    num_classes: int,
    input_shape: Sequence[int],
    head: nn.Module | None = None,
    exit_after: Sequence[int] | None = None,
    exit_head: ExitHeadFactory = pooled_linear_head,
    gradient_equilibrium: bool = False,
) -> MultiExitNetwork:
    """A multi-exit network of the user's `stages`, with an exit after the chosen ones.

    Args:
        stages: `S` modules applied in order (e.g. `[stem + layer1, layer2, layer3]` of a
            ResNet); each takes the previous one's output tensor.
        num_classes: classes of every exit.
        input_shape: per-sample input shape, e.g. `(3, 32, 32)` (sizes the exit heads and
            becomes the network's `default_input_shape`).
        head: the last exit, mapping the last stage's output to `(B, num_classes)` logits
            (the model's own classifier); `None` makes one with `exit_head`.
        exit_after: indices of the stages followed by an intermediate exit, increasing, all
            `< S - 1`; default every stage but the last. The last stage always has an exit.
        exit_head: `(features shape, num_classes) -> module` for the intermediate exits.
        gradient_equilibrium: see `MultiExitNetwork`.

    Returns:
        `MultiExitNetwork`: `forward(x (B, *input_shape)) -> DynamicOutput` with one
        `(B, num_classes)` tensor per exit in `exit_logits` and per-sample `flops (B,)`.

    Raises:
        ConfigError: no stages, bad `exit_after`, or stages that do not chain on `input_shape`.
    """
    stages = list(stages)
    if not stages:
        raise ConfigError("add_exits: give at least one stage")
    last = len(stages) - 1
    chosen = list(range(last)) if exit_after is None else [int(i) for i in exit_after]
    if any(not 0 <= i < last for i in chosen) or chosen != sorted(set(chosen)):
        raise ConfigError(
            f"add_exits: exit_after must be increasing stage indices in 0..{last - 1} (the last "
            f"stage always has an exit), got {list(exit_after or [])}"
        )
    shapes = _stage_output_shapes(stages, tuple(int(s) for s in input_shape))
    exits = [exit_head(shapes[i], num_classes) for i in chosen]
    exits.append(exit_head(shapes[last], num_classes) if head is None else head)
    return MultiExitNetwork(
        stages, exits, chosen + [last], gradient_equilibrium=gradient_equilibrium,
        default_input_shape=tuple(int(s) for s in input_shape),
    )


def _stage_output_shapes(stages: list[nn.Module], shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-sample output shape of each stage, the stages chained from `shape` (on meta tensors)."""
    shapes = []
    with _disable_current_modes():
        for i, stage in enumerate(stages):
            try:
                _, shape = flops_and_shape(stage, shape)
            except (RuntimeError, ValueError) as error:
                raise ConfigError(
                    f"add_exits: stage {i} ({type(stage).__name__}) cannot take per-sample input "
                    f"{shape}: {str(error).splitlines()[0]}"
                ) from None
            if not isinstance(shape, tuple):
                raise ConfigError(f"add_exits: stage {i} ({type(stage).__name__}) must return one tensor")
            shapes.append(shape)
    return shapes
