"""RANet (Yang et al., "Resolution Adaptive Networks for Efficient Inference", CVPR 2020).

Why it suits early exits: many images are classified correctly from a coarse view. RANet
builds base features at several resolutions in its first layer, then runs one dense
sub-network per resolution, the *lowest first*, each ending with its own exits; an easy
sample leaves after the cheap low-resolution sub-network. A later sub-network works at a
higher resolution and fuses, block by block, the features of the sub-network before it
(conv at the low resolution, bilinear up-sampling, concatenation), so the high-resolution
path reuses the coarse one instead of starting over. Its fusion blocks halve the
resolution until it reaches the coarsest one, where its own blocks and exits run.

Configuration (`RANet` arguments; the official CIFAR settings in brackets):
- `scales`: resolution level of each sub-network, coarsest first, `1` = coarsest, rising
  by 0 or 1 [`(1, 2, 3)`: 8x8, 16x16, 32x32 on CIFAR; `(1, 2, 3, 3)` a 4-sub-network variant].
- sub-network `s` has `num_blocks + s * block_step` blocks [2 + 2s: 2, 4, 6]; its first
  blocks (as many as the previous sub-network has) are fusion blocks, without exits; each
  of its other blocks ends with an exit, so there are `num_blocks + (S - 1) * block_step`
  exits [6: two per sub-network].
- block `j` (1-based, the same in every sub-network) has `step` layers (`step_mode="even"`)
  or `step * j` ("linear") [4, even; the README's variant: 2, linear].
- sub-network `s` starts from `channels * growth_factors[s]` channels and grows by
  `growth_rate * growth_factors[s]` per layer [16, 6, factors 4-2-1]; bottleneck width
  `min(c_in, bottleneck_factors[s] * c_out)` [4-2-1].
- a fusion layer makes `floor(growth * fusion_ratio)` of its new channels from the low
  sub-network [0.25]; a fusion block's down-sampling layer is its last one, in the blocks
  where earlier sub-networks ended (the last `scales[s] - 1` of them).
- a 1x1 transition to `floor(compression * C)` channels after block
  `floor(k * n / scales[s])`, `k = 1 .. scales[s] - 1`, of a sub-network of `n` blocks [0.5].
- each exit: two 3x3 conv-BN-ReLU of `head_channels` at stride 2 on the coarsest
  resolution, pooling, linear [128].

Differences from the official code (github.com/yangle15/RANet-pytorch, read for the
facts): resampling is bilinear with `align_corners=False` (a 2x2 mean when halving), and
the image stem has no conv bias.

`ranet_cifar` (defaults: the official CIFAR settings above with 2 layers per block and
exit heads of 64 channels, CPU-sized like `msdnet_cifar`), 10 classes, 754,288
parameters; cumulative per-sample FLOPs per exit (2 per multiply-add;
`tests/depth/test_ranet.py` recomputes them):

| input            | exit 1     | exit 2     | exit 3     | exit 4     | exit 5     | exit 6     |
|------------------|------------|------------|------------|------------|------------|------------|
| 3x32x32 (CIFAR)  | 13,681,920 | 25,283,072 | 34,995,456 | 38,449,664 | 45,562,496 | 47,185,792 |
| 1x28x28 (MNIST)  | 10,576,896 | 20,219,648 | 28,079,352 | 31,251,320 | 36,986,822 | 38,571,238 |

Exits 1-2 run the 8x8 sub-network, 3-4 the 16x16 one, 5-6 the 32x32 one. With the
official `step=4, head_channels=128`: 2,451,158 parameters, 26.8M to 121.9M FLOPs.
For comparison `msdnet_cifar` costs 15.5M to 53.4M and `resnet20` 81.6M FLOPs.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

from ...errors import ConfigError
from .._registry import register_model
from ..static._checks import require_positive
from .exit_head import ExitHead
from .multi_exit import MultiExitNetwork
from .ranet_layers import RABlock, RAFirstLayer


class RANetStage(nn.Module):
    """The blocks between two exits, with the bookkeeping of the state they pass on.

    The state after an exit is a flat list `[x, *pending, *taps]`: `x` the features the
    running sub-network (and its exit) reads; `pending` the first layer's features of the
    sub-networks not started yet; `taps` those of the running sub-network's blocks that the
    next sub-network fuses (none in the last sub-network).

    Args:
        blocks: the blocks, in order.
        plan: per block `(starts, keeps, position)`: whether it is the first block of a
            new sub-network, whether its taps are kept for the next one, and its index in
            its sub-network (a fusion block reads the taps of the same index).
        first: the first layer (stage 0 only; it then reads the image).
        num_pending: length of `pending` in the input state.
        tap_counts: tensors per block of `taps` in the input state.

    Shapes:
        image `(B, C, H, W)` (stage 0) or the state list -> the state list.
    """

    def __init__(self, blocks: Sequence[RABlock], plan: Sequence[tuple[bool, bool, int]], first: RAFirstLayer | None,
                 num_pending: int, tap_counts: Sequence[int]):
        super().__init__()
        self.first = first
        self.blocks = nn.ModuleList(blocks)
        self.plan = tuple((bool(s), bool(k), int(p)) for s, k, p in plan)
        self.num_pending = int(num_pending)
        self.tap_counts = tuple(int(c) for c in tap_counts)

    def _walk(self, inputs, run: Callable):
        """The stage on tensors (`run` calls a module) or on shapes (`run` adds up FLOPs)."""
        if self.first is not None:
            features = run(self.first, inputs)
            x, pending, taps = features[0], list(features[1:]), []
        else:
            x, pending = inputs[0], list(inputs[1:1 + self.num_pending])
            rest, taps = list(inputs[1 + self.num_pending:]), []
            for count in self.tap_counts:
                taps.append(rest[:count])
                rest = rest[count:]
        low: list = []
        for block, (starts, keeps, position) in zip(self.blocks, self.plan):
            if starts:
                low, taps = taps, []
                x, pending = pending[0], pending[1:]
            x, block_taps = run(block, x, low[position] if block.fuses else None)
            if keeps:
                taps.append(block_taps)
        return [x, *pending, *(t for block_taps in taps for t in block_taps)]

    def forward(self, inputs):
        """Run the stage's blocks.

        Args:
            inputs: the image `(B, C, H, W)` (stage 0) or the previous stage's state list.

        Returns:
            the state list `[x, *pending, *taps]` (see the class docstring).
        """
        return self._walk(inputs, lambda module, *args: module(*args))

    def flops_and_shape(self, in_shape) -> tuple[int, list]:
        """Per-sample FLOPs of the stage and the per-sample shapes of the state it returns.

        Args:
            in_shape: the image's `(C, H, W)` (stage 0) or the input state's shapes.

        Returns:
            `(flops, [shape of x, *shapes of pending, *shapes of taps])`.
        """
        total = 0

        def run(module, *args):
            nonlocal total
            flops, out = module.flops_and_shape(*args)
            total += flops
            return out

        shapes = self._walk(in_shape, run)
        return total, shapes


def _check_scales(scales: Sequence[int]) -> list[int]:
    levels = list(scales) if isinstance(scales, (list, tuple)) else None
    if (
        not levels or any(not isinstance(v, int) or isinstance(v, bool) for v in levels)
        or levels[0] != 1 or any(b - a not in (0, 1) for a, b in zip(levels, levels[1:]))
    ):
        raise ConfigError(
            f"RANet: scales must be a non-empty list of resolution levels, one per sub-network, starting "
            f"at 1 (the coarsest) and rising by 0 or 1, e.g. [1, 2, 3]; got {scales!r}"
        )
    return levels


def _factors(name: str, values: Sequence[int], num: int) -> list[int]:
    if not isinstance(values, (list, tuple)) or len(values) != num or any(
        not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values
    ):
        raise ConfigError(f"RANet: {name} needs one positive int per sub-network ({num}, as in scales), got {values!r}")
    return list(values)


class RANet(MultiExitNetwork):
    """Resolution adaptive network; a `MultiExitNetwork` whose stages are `RANetStage`s.

    Args:
        num_classes, in_chans: classes and image channels.
        scales: resolution level of each sub-network, coarsest first (see the module docstring).
        num_blocks: blocks of the first sub-network (each with an exit).
        block_step: blocks (and exits) each later sub-network adds.
        step, step_mode: layers per block, `"even"` or `"linear"` in the block index.
        channels, growth_rate: base channels and new channels per layer, times
            `growth_factors[s]` in sub-network `s`.
        growth_factors, bottleneck_factors: one positive int per sub-network.
        fusion_ratio: share of a fusion layer's new channels computed from the lower
            resolution, in (0, 1).
        compression: channel factor of the 1x1 transitions, in (0, 1].
        head_channels: width of the two conv layers of each exit.
        stem: `"cifar"` or `"imagenet"` (see `MSDFirstLayer`).
        gradient_equilibrium: see `MultiExitNetwork`.
        default_input_shape: defaults to `(in_chans, 32, 32)` (cifar) / `(in_chans, 224, 224)`.

    Shapes:
        `(B, in_chans, H, W)` -> `DynamicOutput` (`exit_logits`: `num_exits` x `(B, C)`).
        The state between exits is a flat list of tensors (see `RANetStage`); the exits
        read its first entry.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        *,
        scales: Sequence[int] = (1, 2, 3),
        num_blocks: int = 2,
        block_step: int = 2,
        step: int = 4,
        step_mode: str = "even",
        channels: int = 16,
        growth_rate: int = 6,
        growth_factors: Sequence[int] = (4, 2, 1),
        bottleneck_factors: Sequence[int] = (4, 2, 1),
        fusion_ratio: float = 0.25,
        compression: float = 0.5,
        head_channels: int = 128,
        stem: str = "cifar",
        gradient_equilibrium: bool = False,
        default_input_shape: tuple[int, ...] | None = None,
        device=None,
        dtype=None,
    ) -> None:
        require_positive(
            "ranet", num_classes=num_classes, in_chans=in_chans, num_blocks=num_blocks, block_step=block_step,
            step=step, channels=channels, growth_rate=growth_rate, head_channels=head_channels,
        )
        levels = _check_scales(scales)
        num = len(levels)
        growth_factors = _factors("growth_factors", growth_factors, num)
        bottleneck_factors = _factors("bottleneck_factors", bottleneck_factors, num)
        if step_mode not in ("even", "linear"):
            raise ConfigError(f"RANet: step_mode must be 'even' or 'linear', got {step_mode!r}")
        if not 0.0 < compression <= 1.0:
            raise ConfigError(f"RANet: compression must be in (0, 1], got {compression}")
        if not 0.0 < fusion_ratio < 1.0:
            raise ConfigError(f"RANet: fusion_ratio must be in (0, 1), got {fusion_ratio}")
        for s in range(1, num):
            growth = growth_rate * growth_factors[s]
            if not 1 <= math.floor(growth * fusion_ratio) < growth:
                raise ConfigError(
                    f"RANet: growth_rate * growth_factors[{s}] * fusion_ratio = {growth} * {fusion_ratio} must "
                    "leave at least one channel to each path of a fusion layer (raise growth_rate or change "
                    "fusion_ratio)"
                )
        if stem not in ("cifar", "imagenet"):
            raise ConfigError(f"RANet: stem must be 'cifar' or 'imagenet', got {stem!r}")
        factory = {"device": device, "dtype": dtype}
        counts = [num_blocks + s * block_step for s in range(num)]
        first = RAFirstLayer(in_chans, [channels * g for g in growth_factors], levels, stem, **factory)

        stages, exits = [], []
        blocks, plan = [], []
        state_in = (0, ())  # (pending, tap counts) of the state the next stage reads
        previous: list[RABlock] = []
        for s, level in enumerate(levels):
            fused = counts[s - 1] if s else 0
            downs = set(counts[s - level + 1: s]) if level > 1 else set()
            transitions = {math.floor(k * counts[s] / level) for k in range(1, level)}
            chans, growth, own = channels * growth_factors[s], growth_rate * growth_factors[s], []
            for b in range(1, counts[s] + 1):
                fuses = b <= fused
                block = RABlock(
                    chans, growth, step if step_mode == "even" else step * b, bottleneck_factors[s],
                    compression if b in transitions else None,
                    low_channels=previous[b - 1].channels if fuses else None,
                    low_bottleneck_factor=bottleneck_factors[s - 1], fusion_ratio=fusion_ratio,
                    down=b in downs, **factory,
                )
                chans = block.out_chans
                own.append(block)
                blocks.append(block)
                plan.append((b == 1 and s > 0, s < num - 1, b - 1))
                if fuses:
                    continue
                stages.append(RANetStage(blocks, plan, first if not stages else None, *state_in))
                exits.append(ExitHead(chans, num_classes, (head_channels, head_channels), 2, scale_index=0, **factory))
                state_in = (num - 1 - s, tuple(o.num_taps for o in own) if s < num - 1 else ())
                blocks, plan = [], []
            previous = own
        if default_input_shape is None:
            default_input_shape = (in_chans, 32, 32) if stem == "cifar" else (in_chans, 224, 224)
        super().__init__(
            stages, exits, gradient_equilibrium=gradient_equilibrium, default_input_shape=default_input_shape
        )
        self.scales = tuple(levels)


@register_model
def ranet_cifar(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    scales: Sequence[int] = (1, 2, 3),
    num_blocks: int = 2,
    block_step: int = 2,
    step: int = 2,
    channels: int = 16,
    growth_rate: int = 6,
    head_channels: int = 64,
    gradient_equilibrium: bool = False,
    device=None,
    dtype=None,
    **kwargs,
) -> RANet:
    """RANet with the official CIFAR settings (3 sub-networks at 8x8, 16x16, 32x32 with
    2, 4, 6 blocks, growth/bottleneck factors 4-2-1, 6 exits), CPU-sized like
    `msdnet_cifar`: 2 layers per block and exit heads of 64 channels (the official
    defaults are `step=4, head_channels=128`).
    MNIST-sized inputs: pass `in_chans=1` (any H, W). Other `RANet` arguments pass through
    `kwargs`. FLOPs: see the module docstring.
    """
    return RANet(
        num_classes, in_chans, scales=scales, num_blocks=num_blocks, block_step=block_step, step=step,
        channels=channels, growth_rate=growth_rate, head_channels=head_channels,
        gradient_equilibrium=gradient_equilibrium, device=device, dtype=dtype, **kwargs,
    )
