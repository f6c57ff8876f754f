"""Swap the `nn.Conv2d` layers of a user's own model for dynamic convolutions.

`swap_convs(model, kind="condconv")` replaces, in place, every `nn.Conv2d` the filter
accepts by a convolution whose kernel is mixed per sample from `num_experts` kernels, with
a routing function reading the layer's own input:

- `"condconv"`: `RoutedCondConv2d`, sigmoid routing (Yang et al. 2019, CondConv);
- `"dyconv"`: `DynamicConv2d`, softmax attention with a temperature (Chen et al. 2020,
  DY-Conv; anneal the temperature with `gates.schedules.LinearDecay(30.0, 1.0, steps)`
  through the layer's `temperature` forward argument or its `routing.temperature`).

Every `nn.Conv2d` argument form is accepted: `kernel_size`, `stride`, `dilation` and
`padding` as ints or pairs, `padding="valid"` / `"same"` (same needs an even
`dilation * (kernel_size - 1)` per dim: symmetric padding), `groups`, `bias`; only
`padding_mode="zeros"` (what the per-sample grouped convolution supports).

With `init="copy"` every expert starts as the original kernel (and bias): a DY-Conv layer
then computes exactly the original convolution (its attention sums to one), so a trained
model keeps its accuracy at the swap and fine-tunes from there; a CondConv layer computes
it scaled by the sum of its sigmoid routing weights.

The swapped layers are drop-in (`(B, C, H, W) -> (B, C', H', W')`); every sample runs
one convolution with its own kernel, so the cost per sample is fixed:
`layer.flops(H, W)` (routing + kernel mix + convolution), as `FlopCounterMode` counts it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..layers.cond_conv import RoutedCondConv2d
from ..layers.dynamic_conv import DynamicConv2d

KINDS = {"condconv": RoutedCondConv2d, "dyconv": DynamicConv2d}
INITS = ("copy", "fresh")

# (module path, conv) -> whether to swap it
ConvFilter = Callable[[str, nn.Conv2d], bool]


def swap_convs(
    model: nn.Module,
    kind: str = "condconv",
    *,
    num_experts: int = 4,
    filter: ConvFilter | None = None,
    init: str = "copy",
    **layer_kwargs,
) -> nn.Module:
    """Replace the `nn.Conv2d` layers of `model` by CondConv / DY-Conv layers, in place.

    Args:
        model: any module; its `nn.Conv2d` children (exactly that type, not subclasses)
            at any depth are candidates.
        kind: `"condconv"` or `"dyconv"`.
        num_experts: kernels per layer, `K`.
        filter: `(path, conv) -> bool`, which convs to swap (default: all); e.g.
            `lambda path, conv: conv.kernel_size != (1, 1)`.
        init: `"copy"` (every expert starts as the original weights) or `"fresh"` (the
            layer's own initialisation).
        **layer_kwargs: passed to the layer (`temperature`, `hidden_channels`,
            `activation` for CondConv; `temperature`, `reduction`, `min_hidden` for DY-Conv).

    Returns:
        `model`, with the swapped layers on the device and dtype of the convs they replace.

    Raises:
        ConfigError: an unknown `kind`/`init`, no conv swapped, or a conv that cannot be
            swapped (non-zero `padding_mode`, asymmetric `"same"` padding), named by path.
    """
    if kind not in KINDS:
        raise ConfigError(f"swap_convs: kind must be one of {sorted(KINDS)}, got {kind!r}")
    if init not in INITS:
        raise ConfigError(f"swap_convs: init must be one of {INITS}, got {init!r}")
    chosen = [
        (path, module) for path, module in model.named_modules()
        if type(module) is nn.Conv2d and (filter is None or filter(path, module))
    ]
    if not chosen:
        raise ConfigError("swap_convs: the model has no nn.Conv2d that the filter accepts")
    for path, conv in chosen:
        layer = dynamic_conv_like(conv, kind, num_experts=num_experts, init=init, path=path, **layer_kwargs)
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, layer)
    return model


def dynamic_conv_like(
    conv: nn.Conv2d,
    kind: str = "condconv",
    *,
    num_experts: int = 4,
    init: str = "copy",
    path: str = "",
    **layer_kwargs,
) -> RoutedCondConv2d:
    """A CondConv / DY-Conv layer with the geometry of `conv` (see `swap_convs`).

    Returns:
        `RoutedCondConv2d` or `DynamicConv2d`, `(B, in_channels, H, W) -> (B, out_channels, H', W')`
        with the output size of `conv`.
    """
    where = f"swap_convs: conv {path!r}" if path else "dynamic_conv_like"
    if conv.padding_mode != "zeros":
        raise ConfigError(
            f"{where} has padding_mode={conv.padding_mode!r}; only 'zeros' can be swapped (pad the "
            f"input yourself, or leave this conv out with filter=)"
        )
    padding = numeric_padding(conv, where)
    weight = conv.weight
    layer = KINDS[kind](
        conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride), padding,
        tuple(conv.dilation), conv.groups, num_experts, conv.bias is not None,
        device=weight.device, dtype=weight.dtype, **layer_kwargs,
    )
    if init == "copy":
        with torch.no_grad():
            layer.conv.weight.copy_(weight.detach().unsqueeze(0).expand_as(layer.conv.weight))
            if conv.bias is not None:
                layer.conv.bias.copy_(conv.bias.detach().unsqueeze(0).expand_as(layer.conv.bias))
    return layer


def numeric_padding(conv: nn.Conv2d, where: str) -> tuple[int, int]:
    """`conv`'s padding as an `(h, w)` pair (`"valid"` is 0, symmetric `"same"` its size).

    Raises:
        ConfigError: naming `where`, for a `"same"` padding that would be asymmetric.
    """
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in totals):
            raise ConfigError(
                f"{where} has padding='same' with kernel_size={tuple(conv.kernel_size)}, "
                f"dilation={tuple(conv.dilation)}: the padding would be asymmetric, which the "
                f"dynamic conv does not support; use an odd kernel or numeric padding"
            )
        return (totals[0] // 2, totals[1] // 2)
    return tuple(int(p) for p in conv.padding)
