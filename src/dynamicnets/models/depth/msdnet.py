"""MSDNet (Huang et al., ICLR 2018): a multi-scale dense network with an exit per block.

Why it suits early exits: a classifier needs coarse, global features, but in a plain
CNN those appear only at the end. MSDNet keeps a feature map at every scale from the
first layer on (finest to coarsest, each half the resolution of the previous), and
every layer adds new features at each scale: from the same scale (regular conv) and
from the next finer one (strided conv), concatenated densely. Every block ends with a
classifier on the coarsest scale, so even the first exit reads global features, and
dense connections let later layers reuse, rather than overwrite, what the earlier
classifiers needed.

The configuration family (one definition for CIFAR, MNIST-sized and ImageNet-sized
inputs): `num_blocks` exits; block 0 has `base` layers after the input layer, block
`b >= 1` has `step` layers (`step_mode="even"`) or `step * b` layers ("linear");
`channels * growth_factors[s]` channels per scale after the input layer;
`growth_rate * growth_factors[s]` new channels per layer at scale `s`; bottleneck
width `min(c_in, bottleneck_factors[s] * c_out)`; `compression` (1x1 transition at the
start of every block but the first). Finer scales are dropped where nothing deeper
reads them (the exits read only the coarsest scale, so the last layer writes only that
one, the one before it two scales, ...), and with `prune` also on a linear schedule:
over the `L` layers, layer `j` (1-based) writes scales from `floor((j-1) * S / L)` on. Each exit: two 3x3
conv-BN-ReLU of `head_channels` at stride 2 on the coarsest scale, pooling, linear.

`msdnet_cifar` (defaults: 5 blocks of 2 layers, heads of 64 channels), 10 classes,
680,830 parameters; cumulative per-sample FLOPs per exit (2 per multiply-add;
`tests/depth/test_msdnet.py` recomputes them):

| input            | exit 1     | exit 2     | exit 3     | exit 4     | exit 5     |
|------------------|------------|------------|------------|------------|------------|
| 3x32x32 (CIFAR)  | 15,545,600 | 27,404,800 | 37,795,584 | 46,326,784 | 53,388,032 |
| 1x28x28 (MNIST)  | 12,003,776 | 21,602,176 | 30,059,040 | 37,083,520 | 42,978,248 |

For comparison `resnet20` costs 81,624,368 FLOPs on 3x32x32.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ...errors import ConfigError
from .._registry import register_model
from ..static._checks import require_positive
from .exit_head import ExitHead
from .msdnet_layers import MSDFirstLayer, MSDLayer, MSDTransition
from .multi_exit import MultiExitNetwork


def _block_layer_counts(num_blocks: int, base: int, step: int, step_mode: str) -> list[int]:
    if step_mode == "even":
        return [base] + [step] * (num_blocks - 1)
    if step_mode == "linear":
        return [base] + [step * b for b in range(1, num_blocks)]
    raise ConfigError(f"MSDNet: step_mode must be 'even' or 'linear', got {step_mode!r}")


def _first_scales(total_layers: int, num_scales: int, prune: bool) -> list[int]:
    """First scale written by layers `1..L` (index 0 = the input layer, all scales).

    Two rules: (1) nothing is computed that nobody reads: the exits read only the
    coarsest scale and layer `j + 1` reads scales `>= first[j + 1] - 1`, so layer `j`
    writes from `S - 1 - (L - j)` on at least; (2) with `prune`, scales are also dropped
    on the linear schedule `floor((j - 1) * S / L)`, one scale at a time.
    """
    firsts = [0]
    for j in range(1, total_layers + 1):
        needed = max(0, num_scales - 1 - (total_layers - j))
        schedule = min(num_scales - 1, (j - 1) * num_scales // total_layers, firsts[-1] + 1) if prune else 0
        firsts.append(max(needed, schedule))
    return firsts


class MSDNet(MultiExitNetwork):
    """Multi-scale dense network; a `MultiExitNetwork` whose stages are MSDNet blocks.

    Args:
        num_classes, in_chans: classes and image channels.
        num_blocks: number of blocks = number of exits.
        base, step, step_mode: layers per block (see the module docstring).
        num_scales: 3 for CIFAR / MNIST, 4 for ImageNet.
        channels: channels at scale 0 after the input layer.
        growth_rate: new channels per layer at scale 0.
        growth_factors, bottleneck_factors: per-scale multipliers (`num_scales` ints);
            `bottleneck_factors=None` uses plain 3x3 convs.
        compression: channel factor of the transition at the start of blocks `1..`;
            `1.0` for none.
        prune: drop the finest scales late in the network.
        head_channels: width of the two conv layers of each exit.
        stem: `"cifar"` or `"imagenet"` (see `MSDFirstLayer`).
        gradient_equilibrium: see `MultiExitNetwork`.
        default_input_shape: defaults to `(in_chans, 32, 32)` (cifar) / `(in_chans, 224, 224)`.

    Shapes:
        `(B, in_chans, H, W)` -> `DynamicOutput` (`exit_logits`: `num_blocks` x `(B, C)`).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        *,
        num_blocks: int = 5,
        base: int = 2,
        step: int = 2,
        step_mode: str = "even",
        num_scales: int = 3,
        channels: int = 16,
        growth_rate: int = 6,
        growth_factors: Sequence[int] = (1, 2, 4),
        bottleneck_factors: Sequence[int] | None = (1, 2, 4),
        compression: float = 0.5,
        prune: bool = True,
        head_channels: int = 128,
        stem: str = "cifar",
        gradient_equilibrium: bool = False,
        default_input_shape: tuple[int, ...] | None = None,
        device=None,
        dtype=None,
    ) -> None:
        require_positive(
            "msdnet", num_classes=num_classes, in_chans=in_chans, num_blocks=num_blocks, base=base, step=step,
            num_scales=num_scales, channels=channels, growth_rate=growth_rate, head_channels=head_channels,
        )
        growth_factors = [int(g) for g in growth_factors]
        if len(growth_factors) != num_scales or (
            bottleneck_factors is not None and len(bottleneck_factors) != num_scales
        ):
            raise ConfigError(
                f"MSDNet: growth_factors and bottleneck_factors need num_scales={num_scales} entries, got "
                f"{list(growth_factors)} and {None if bottleneck_factors is None else list(bottleneck_factors)}"
            )
        if num_scales > 1 and min(growth_rate * g for g in growth_factors[1:]) < 2:
            raise ConfigError("MSDNet: growth_rate * growth_factors[s] must be >= 2 for s >= 1 (two paths share it)")
        if not 0.0 < compression <= 1.0:
            raise ConfigError(f"MSDNet: compression must be in (0, 1], got {compression}")
        if stem not in ("cifar", "imagenet"):
            raise ConfigError(f"MSDNet: stem must be 'cifar' or 'imagenet', got {stem!r}")
        factory = {"device": device, "dtype": dtype}
        counts = _block_layer_counts(num_blocks, base, step, step_mode)
        firsts = _first_scales(sum(counts), num_scales, prune)
        growth = [growth_rate * g for g in growth_factors]

        chans = [channels * g for g in growth_factors]
        stages, exits, layer = [], [], 0
        for b, count in enumerate(counts):
            modules: list[nn.Module] = []
            if b == 0:
                modules.append(MSDFirstLayer(in_chans, chans, stem, **factory))
            elif compression < 1.0:
                reduced = [max(1, int(c * compression)) for c in chans]
                modules.append(MSDTransition(chans, reduced, **factory))
                chans = reduced
            for _ in range(count):
                layer += 1
                msd = MSDLayer(chans, firsts[layer - 1], firsts[layer], growth, bottleneck_factors, **factory)
                modules.append(msd)
                chans = msd.out_channels
            stages.append(nn.Sequential(*modules))
            exits.append(ExitHead(chans[-1], num_classes, (head_channels, head_channels), 2, scale_index=-1, **factory))
        if default_input_shape is None:
            default_input_shape = (in_chans, 32, 32) if stem == "cifar" else (in_chans, 224, 224)
        super().__init__(
            stages, exits, gradient_equilibrium=gradient_equilibrium, default_input_shape=default_input_shape
        )


@register_model
def msdnet_cifar(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    num_blocks: int = 5,
    base: int = 2,
    step: int = 2,
    channels: int = 16,
    growth_rate: int = 6,
    head_channels: int = 64,
    gradient_equilibrium: bool = False,
    device=None,
    dtype=None,
    **kwargs,
) -> MSDNet:
    """MSDNet with the CIFAR configuration (3 scales, growth/bottleneck factors 1-2-4),
    CPU-sized: 5 blocks of 2 layers and exit heads of 64 channels (the paper's CIFAR
    models use 128, `head_channels=128`). MNIST-sized inputs: pass `in_chans=1` (any H, W).
    Other `MSDNet` arguments pass through `kwargs`. FLOPs: see the module docstring.
    """
    return MSDNet(
        num_classes, in_chans, num_blocks=num_blocks, base=base, step=step, channels=channels,
        growth_rate=growth_rate, head_channels=head_channels, gradient_equilibrium=gradient_equilibrium,
        device=device, dtype=dtype, **kwargs,
    )
