"""Accuracy, loss, per-exit accuracy and mean FLOPs of a classifier over a loader."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from .distributed import all_reduce_sum


def autocast_context(device: torch.device, bf16: bool):
    """bfloat16 autocast on `device` when `bf16`, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move a batch to `device`; 4-D `(B, C, H, W)` inputs go channels-last when asked."""
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def to_channels_last(model: nn.Module) -> nn.Module:
    """Put every 4-D parameter and buffer of `model` in channels-last layout, in place.

    Unlike `model.to(memory_format=torch.channels_last)`, tensors of other ranks are left
    alone, so models holding stacked expert kernels `(K, C_out, C_in, k, k)` (CondConv,
    DY-Conv, conv experts) convert too.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: str | torch.device,
    *,
    bf16: bool = False,
    channels_last: bool = False,
) -> dict:
    """Evaluate `model` (in eval mode) on every batch of `loader`.

    Under an initialised multi-process group the sums are all-reduced, so every rank
    gets the metrics of the whole (sharded) data set.

    Args:
        model: returns a `DynamicOutput` for an input batch `(B, *input_shape)`.
        loader: yields `(x, y)` with `x: (B, *input_shape)` float and `y: (B,)` int64.
        device: where the model lives.
        bf16: run the forward pass under bfloat16 autocast.
        channels_last: feed 4-D inputs channels-last.

    Returns:
        dict with `accuracy` (of `out.logits`), `loss` (mean cross-entropy of
        `out.logits`), `exit_accuracy` (list, one per exit in `out.exit_logits`),
        `mean_flops` (mean of `out.flops` over samples; None if the model reports none),
        `block_execution_rate` (per gated block, the fraction of samples that ran it, for
        models reporting `decisions["gates"]`; else None) and `samples` (count evaluated).

    Raises:
        DataError: the loader yielded no samples.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = None  # [loss, correct, count, flops_sum, flops_count, exit_correct...] as float64
    try:
        for x, y in loader:
            x = to_device(x, device, channels_last)
            y = y.to(device, non_blocking=True)
            with autocast_context(device, bf16):
                out = model(x)
            logits = out.logits.float()
            parts = [
                F.cross_entropy(logits, y, reduction="sum").double(),
                (logits.argmax(1) == y).sum().double(),
                torch.tensor(float(y.shape[0]), dtype=torch.float64, device=device),
            ]
            if out.flops is not None:
                parts += [out.flops.double().sum(), torch.tensor(float(out.flops.shape[0]), dtype=torch.float64,
                                                                 device=device)]
            else:
                parts += [torch.zeros((), dtype=torch.float64, device=device)] * 2
            parts += [(e.float().argmax(1) == y).sum().double() for e in out.exit_logits]
            gates = out.decisions.get("gates")
            if gates is not None:  # (B, G) per-block execution decisions of layer-skipping models
                parts += list(gates.double().sum(0).unbind())
            num_exits = len(out.exit_logits)
            batch = torch.stack(parts)
            sums = batch if sums is None else sums + batch
    finally:
        model.train(was_training)
    if sums is None:
        sums = torch.zeros(5, dtype=torch.float64, device=device)
        num_exits = 0
    sums = all_reduce_sum(sums).tolist()
    loss_sum, correct, count, flops_sum, flops_count = sums[:5]
    if count == 0:
        raise DataError("evaluate: the loader yielded no samples (empty validation set?)")
    return {
        "accuracy": correct / count,
        "loss": loss_sum / count,
        "exit_accuracy": [c / count for c in sums[5:5 + num_exits]],
        "block_execution_rate": [g / count for g in sums[5 + num_exits:]] or None,
        "mean_flops": flops_sum / flops_count if flops_count > 0 else None,
        "samples": int(count),
    }
