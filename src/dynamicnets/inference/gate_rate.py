"""Execution-rate calibration of layer-skipping gates: thresholds chosen on data.

A gated ResNet (SkipNet, ConvNet-AIG, BlockDrop) decides at inference with `logit > 0`.
How many blocks that executes is whatever training left behind: after a short schedule
the gates of SkipNet and ConvNet-AIG often sit on the "execute" side for every sample
(ConvNet-AIG's loss pulls the *mean* gate probability to the target, which a 0.5
threshold turns into "always run"). Calibration moves each gate's threshold instead, so
that a chosen fraction of real inputs executes each gated block, the way early-exit
thresholds are fitted to a budget (`calibrate_thresholds`):

    cuts = calibrate_gate_rate(model, calibration_loader, rate=0.5)
    model(x)  # compact inference now executes about half of every gated block

The threshold is folded into the bias of the layer that produces the logits, so every
execution path (masked, compact, the lean batch-1 path) and a saved checkpoint see the
same decisions; nothing else in the model changes. A gate's input depends on the
decisions of the gates before it, so the gates are fitted in order inside one forward of
the calibration data (eval mode, masked execution: every block computed, the hard
decisions applied, exactly what compact inference computes): each gate's cut is taken
from its logits on all the calibration samples and applied before the next gate reads
its input. The whole calibration set is one batch: its memory is that of one no-grad
forward of that many samples (a few hundred MB for 2,500 CIFAR images in ResNet-110).

A model whose gates share one output layer (SkipNet's recurrent gate) gets one threshold
for all blocks, refitted over `passes` forwards: the fraction `rate` then holds over all
its gated blocks together, approximately.
Fit on data the model is not scored on (`split_for_calibration`).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..protocols import CalibratableGates
from ..errors import ConfigError
from ..gates.thresholds import GatePolicy


def gate_logit_layers(model: nn.Module) -> list[nn.Linear]:
    """The linear layers whose outputs are `model`'s gate logits (`model.gate_logit_layers()`).

    Raises:
        ConfigError: `model` has no calibratable gates.
    """
    if not isinstance(model, CalibratableGates):
        raise ConfigError(
            f"{type(model).__name__}: has no layer-skipping gates to calibrate (expected a gated ResNet "
            "such as skipnet_resnet, convnet_aig_resnet or blockdrop_resnet)"
        )
    return list(model.gate_logit_layers())


def _batches(data: Tensor | Iterable, device: torch.device) -> list[Tensor]:
    if isinstance(data, Tensor):
        return [data.to(device)]
    batches = []
    for item in data:
        x = item[0] if isinstance(item, (tuple, list)) else item
        batches.append(x.to(device))
    if not batches:
        raise ConfigError("calibrate_gate_rate: the calibration data is empty")
    return batches


def _check_rates(rate: float | Sequence[float], count: int) -> Tensor:
    rates = [float(rate)] * count if isinstance(rate, (int, float)) else [float(r) for r in rate]
    if len(rates) != count:
        raise ConfigError(f"calibrate_gate_rate: expected one rate or {count} (one per gate output), got {len(rates)}")
    if not all(0.0 < r <= 1.0 for r in rates):
        raise ConfigError(f"calibrate_gate_rate: rates must lie in (0, 1], got {rates}")
    return torch.tensor(rates, dtype=torch.float64)


def _run_with_hooks(model: nn.Module, x: Tensor, layers: list[nn.Linear], fn) -> None:
    """One masked eval forward of `x` with `fn(k, layer, output)` hooked on each layer
    (a non-`None` return replaces the layer's output)."""
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: fn(k, m, o)) for k, layer in enumerate(layers)]
    try:
        model(x, execution="masked")
    finally:
        for hook in hooks:
            hook.remove()


def _cuts(logits: Tensor, rates: Tensor) -> Tensor:
    """`(samples, outputs)` logits -> per output the cut that leaves a fraction `rate` of
    the logits strictly above it (the block runs where `logit > cut`)."""
    cuts = []
    for j, r in enumerate(rates.tolist()):
        column = logits[:, j]
        cuts.append(column.min() - 1.0 if r >= 1.0 else torch.quantile(column, 1.0 - r))
    return torch.stack(cuts)


@torch.no_grad()
def calibrate_gate_rate(
    model: nn.Module,
    data: Tensor | Iterable,
    rate: float | Sequence[float],
    *,
    passes: int = 3,
) -> list[Tensor]:
    """Shift `model`'s gate biases (in place) so each gated block executes on a fraction
    `rate` of `data`.

    Args:
        model: a gated ResNet with `gate_logit_layers()`; left in eval mode.
        data: calibration inputs `(N, C, H, W)`, or an iterable of batches (`x` or
            `(x, y)` pairs, e.g. a `DataLoader`).
        rate: executed fraction per gated block, in `(0, 1]`: one number for every block
            or one per gate output (`sum(layer.out_features)` of the logit layers, in gate
            order).
        passes: forwards for a shared output layer (recurrent gate), each refitting its
            one threshold to the decisions the last fit made; per-block gates are fitted
            exactly in one forward.

    Returns:
        The total bias shift subtracted from each logit layer (one `(out_features,)`
        tensor per layer): the thresholds on the original logits.

    Raises:
        ConfigError: a model without gates, empty data, rates outside `(0, 1]`, passes < 1.
    """
    layers = gate_logit_layers(model)
    if passes < 1:
        raise ConfigError(f"calibrate_gate_rate: passes must be >= 1, got {passes}")
    sizes = [layer.out_features for layer in layers]
    rates = _check_rates(rate, sum(sizes)).split(sizes)
    x = torch.cat(_batches(data, layers[0].bias.device))
    model.eval()
    total = [torch.zeros_like(layer.bias) for layer in layers]
    if sum(sizes) == model.num_gated_blocks:
        # one logit per block, each layer called once per forward: fit each gate inside
        # the forward, before the later gates read its decisions -- exact in one pass
        def shift(k: int, layer: nn.Linear, output: Tensor) -> Tensor:
            cut = _cuts(output.double().reshape(-1, output.shape[-1]), rates[k]).to(output.dtype)
            layer.bias.sub_(cut)
            total[k] += cut
            return output - cut

        _run_with_hooks(model, x, layers, shift)
        return total
    for _ in range(passes):  # a shared output layer: one cut over all its calls, refitted
        seen: list[list[Tensor]] = [[] for _ in layers]
        _run_with_hooks(model, x, layers, lambda k, layer, o: seen[k].append(o.double().reshape(-1, o.shape[-1])))
        for k, layer in enumerate(layers):
            cut = _cuts(torch.cat(seen[k]), rates[k]).to(layer.bias.dtype)
            layer.bias.sub_(cut)
            total[k] += cut
    return total


def calibrate_gate_policy(
    model: nn.Module,
    data: Tensor | Iterable,
    rate: float | Sequence[float],
    *,
    passes: int = 3,
) -> GatePolicy:
    """Fit inference thresholds so each gated block executes on a fraction `rate` of
    `data`, and return them as a `GatePolicy`; `model` itself is left unchanged.

    The same fit as `calibrate_gate_rate` (done on a copy): pass the result at inference,
    `model(x, policy=policy)`, save it with `policy.to_dict()`.

    Args:
        model: a gated ResNet with `gate_logit_layers()` (put in eval mode).
        data: calibration inputs `(N, C, H, W)`, or an iterable of batches.
        rate: executed fraction per gated block, in `(0, 1]` (one, or one per gate output).
        passes: refits of a shared (recurrent) gate output layer.

    Returns:
        `GatePolicy` with one threshold per gated block on the original gate logits.

    Raises:
        ConfigError: as `calibrate_gate_rate`.
    """
    model.eval()
    shifted = copy.deepcopy(model)
    cuts = torch.cat([c.flatten() for c in calibrate_gate_rate(shifted, data, rate, passes=passes)]).tolist()
    blocks = int(model.num_gated_blocks)
    if len(cuts) == 1:  # one output layer shared by every block (SkipNet's recurrent gate)
        cuts = cuts * blocks
    return GatePolicy(tuple(cuts), {"calibrated_rate": rate if isinstance(rate, (int, float)) else list(rate)})
