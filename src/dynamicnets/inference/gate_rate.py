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

The rates fix a mean cost: `budget = ` the mean per-sample FLOPs the rate fit spends on the
calibration set. On a fresh batch the realised mean strays from it (`cost_spread`). With a
`confidence`, `fit_gate_rate` scales every rate down by one common factor, the largest
whose upper confidence bound of the fresh batch's mean FLOPs is within that budget: the
batch then spends no more than the rates promise with probability about `confidence`.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..protocols import CalibratableGates
from ..errors import ConfigError
from ..gates.thresholds import GatePolicy
from .cost_spread import CostSpread, check_confidence, check_eval_size, cost_spread, within_budget


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


def _fit(model: nn.Module, x: Tensor, layers: list[nn.Linear], rates: Sequence[Tensor], passes: int) -> list[Tensor]:
    """Shift the biases of `layers` (in place) so each gate output runs on a fraction
    `rates[k]` of `x`; returns the shift of each layer."""
    total = [torch.zeros_like(layer.bias) for layer in layers]
    if sum(layer.out_features for layer in layers) == model.num_gated_blocks:
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


@dataclass
class GateRateFit:
    """What `fit_gate_rate` did to a model.

    Attributes:
        cuts: the total bias shift of each logit layer (one `(out_features,)` tensor per
            layer): the thresholds on the original logits.
        spread: the mean per-sample FLOPs expected on `spread.eval_size` fresh samples,
            its standard deviation and, with a confidence, its upper bound.
        budget_flops: mean FLOPs per sample the requested rates spend on the calibration
            set (what the upper bound is held within).
        rate_scale: the factor in `(0, 1]` the rates were scaled by (1 without a confidence).
    """

    cuts: list[Tensor]
    spread: CostSpread
    budget_flops: float
    rate_scale: float = 1.0


@torch.no_grad()
def fit_gate_rate(
    model: nn.Module,
    data: Tensor | Iterable,
    rate: float | Sequence[float],
    *,
    passes: int = 3,
    confidence: float | None = None,
    eval_size: int | None = None,
    iterations: int = 10,
) -> GateRateFit:
    """`calibrate_gate_rate` (in place), reporting the cost the fitted gates are expected
    to spend on fresh data; with `confidence`, the rates are scaled down until the upper
    confidence bound of that cost is within what the requested rates spend.

    Args:
        model: a gated ResNet with `gate_logit_layers()`; left in eval mode.
        data: calibration inputs `(N, C, H, W)`, or an iterable of batches.
        rate: executed fraction per gated block, in `(0, 1]` (one, or one per gate output).
        passes: refits of a shared (recurrent) gate output layer.
        confidence: `None`, or a probability in `(0, 1)`: for i.i.d. data, a fresh batch of
            `eval_size` samples then spends at most `budget_flops` per sample on average with
            about this probability (`cost_spread`).
        eval_size: size of that fresh batch; `None`: the expected cost per sample.
        iterations: bisection steps over the common rate factor (with a confidence).

    Returns:
        `GateRateFit`.

    Raises:
        ConfigError: as `calibrate_gate_rate`, or `confidence` outside `(0, 1)`, a bad
            `eval_size` or `iterations`.
    """
    layers = gate_logit_layers(model)
    if passes < 1:
        raise ConfigError(f"calibrate_gate_rate: passes must be >= 1, got {passes}")
    confidence = check_confidence(confidence, "calibrate_gate_rate")
    eval_size = check_eval_size(eval_size, "calibrate_gate_rate")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"calibrate_gate_rate: iterations must be an int >= 1, got {iterations!r}")
    sizes = [layer.out_features for layer in layers]
    rates = _check_rates(rate, sum(sizes))
    x = torch.cat(_batches(data, layers[0].bias.device))
    model.eval()
    originals = [layer.bias.detach().clone() for layer in layers]

    def fit(scale: float) -> tuple[list[Tensor], Tensor]:
        for layer, bias in zip(layers, originals):
            layer.bias.copy_(bias)
        cuts = _fit(model, x, layers, (rates * scale).split(sizes), passes)
        return cuts, model(x).flops  # compact inference: the FLOPs of what ran, per sample

    cuts, flops = fit(1.0)
    budget = float(flops.double().mean())
    scale = 1.0
    if confidence is not None and not within_budget(flops, budget, eval_size=eval_size, confidence=confidence):
        # scale 0 runs no gated block: every sample costs the same, within any budget
        low, high, best = 0.0, 1.0, None
        for _ in range(iterations):
            middle = 0.5 * (low + high)
            trial = fit(middle)
            if within_budget(trial[1], budget, eval_size=eval_size, confidence=confidence):
                low, best = middle, trial
            else:
                high = middle
        scale = low
        cuts, flops = best if best is not None else fit(low)
        for layer, bias, cut in zip(layers, originals, cuts):
            layer.bias.copy_(bias - cut)
    return GateRateFit(cuts, cost_spread(flops, eval_size=eval_size, confidence=confidence), budget, scale)


def calibrate_gate_rate(
    model: nn.Module,
    data: Tensor | Iterable,
    rate: float | Sequence[float],
    *,
    passes: int = 3,
    confidence: float | None = None,
    eval_size: int | None = None,
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
        confidence: scale the rates down so that a fresh batch of `eval_size` samples
            spends no more FLOPs than `rate` promises with about this probability
            (`fit_gate_rate`, which also reports the expected spread).
        eval_size: that batch's size; `None`: the expected cost per sample.

    Returns:
        The total bias shift subtracted from each logit layer (one `(out_features,)`
        tensor per layer): the thresholds on the original logits.

    Raises:
        ConfigError: a model without gates, empty data, rates outside `(0, 1]`, passes < 1,
            confidence outside `(0, 1)`.
    """
    return fit_gate_rate(model, data, rate, passes=passes, confidence=confidence, eval_size=eval_size).cuts


def calibrate_gate_policy(
    model: nn.Module,
    data: Tensor | Iterable,
    rate: float | Sequence[float],
    *,
    passes: int = 3,
    confidence: float | None = None,
    eval_size: int | None = None,
) -> GatePolicy:
    """Fit inference thresholds so each gated block executes on a fraction `rate` of
    `data`, and return them as a `GatePolicy`; `model` itself is left unchanged.

    The same fit as `fit_gate_rate` (done on a copy): pass the result at inference,
    `model(x, policy=policy)`, save it with `policy.to_dict()`.

    Args:
        model: a gated ResNet with `gate_logit_layers()` (put in eval mode).
        data: calibration inputs `(N, C, H, W)`, or an iterable of batches.
        rate: executed fraction per gated block, in `(0, 1]` (one, or one per gate output).
        passes: refits of a shared (recurrent) gate output layer.
        confidence: `None`, or a probability in `(0, 1)`: rates scaled down so that a
            fresh batch of `eval_size` samples spends no more FLOPs than `rate` promises
            with about this probability (`fit_gate_rate`).
        eval_size: that batch's size; `None`: the expected cost per sample.

    Returns:
        `GatePolicy` with one threshold per gated block on the original gate logits; its
        `meta` holds `calibrated_rate`, `budget_flops`, `rate_scale` and `cost` (the
        `CostSpread` as a dict: expected mean FLOPs, its spread, the upper bound).

    Raises:
        ConfigError: as `fit_gate_rate`.
    """
    model.eval()
    shifted = copy.deepcopy(model)
    fitted = fit_gate_rate(shifted, data, rate, passes=passes, confidence=confidence, eval_size=eval_size)
    cuts = torch.cat([c.flatten() for c in fitted.cuts]).tolist()
    blocks = int(model.num_gated_blocks)
    if len(cuts) == 1:  # one output layer shared by every block (SkipNet's recurrent gate)
        cuts = cuts * blocks
    meta = {"calibrated_rate": rate if isinstance(rate, (int, float)) else list(rate),
            "budget_flops": fitted.budget_flops, "rate_scale": fitted.rate_scale, "cost": fitted.spread.to_dict()}
    return GatePolicy(tuple(cuts), meta)
