"""A static anchor beside `dynamicnets eval`: scored on the same samples, timed in the same run.

A dynamic model's saving is real only against the static network it replaces. The anchor (a
checkpoint, run folder or shipped weights of that network, trained on the same data) reads
exactly the inputs the evaluated model reads, is scored on the same samples, and is timed
with the evaluated model's rule in one `profiling.latency.compare` run, interleaved in
rounds, at the evaluation batch size and at batch 1: the speedups are ratios of times
measured together.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import make_eval_loader
from ..data.preprocessing import Preprocessing, trained_preprocessing
from ..errors import ConfigError
from ..execution import supported_executions
from ..profiling.latency import compare, ratio
from ..protocols import MultiExit
from ..training.evaluate import evaluate
from .checkpoints import load_model_source

ANCHOR_BATCH1_SAMPLES = 32
"""Samples timed one at a time for the batch-1 ratio."""


@dataclass
class Anchor:
    """A loaded anchor network.

    Attributes:
        model: the network in eval mode; `model(x)` returns a `DynamicOutput` for
            `x: (B, *input_shape)`.
        source: how the result names it (a checkpoint path, or `NAME/TAG` of shipped weights).
        flops: its counted FLOPs per sample (a static network costs the same for every input).
    """

    model: nn.Module
    source: str
    flops: float


def _anchor_source(text: str) -> tuple[str | None, str | None, str | None]:
    """`--anchor` as `(checkpoint, model, tag)`: an existing path, or `NAME:TAG` of shipped weights."""
    if Path(text).expanduser().exists():
        return text, None, None
    name, sep, tag = text.partition(":")
    if sep and name and tag and "/" not in text and "\\" not in text:
        return None, name, tag
    raise ConfigError(f"--anchor {text}: no such checkpoint or run folder, and not NAME:TAG of shipped weights "
                      "(e.g. resnet20:cifar10; `dynamicnets models --pretrained` lists them)")


def load_anchor(text: str, trained: Preprocessing, num_classes: int, full_flops: Callable[[nn.Module], float],
                *, pretrained_dir: str | None = None, device: str | torch.device = "cpu") -> Anchor:
    """The anchor `--anchor text` names, after checking it reads the evaluated model's inputs.

    Args:
        text: a checkpoint file or run folder, or `NAME:TAG` of shipped weights.
        trained: the evaluated model's preprocessing (input shape included).
        num_classes: the evaluated model's number of classes.
        full_flops: counts a model's FLOPs per sample with nothing skipped.

    Raises:
        ConfigError: `text` names nothing, or a network with other inputs, other classes,
            early exits or other per-input decisions.
        CheckpointError: the checkpoint or shipped weights cannot be read.
    """
    checkpoint, name, tag = _anchor_source(text)
    model, ckpt, source, origin = load_model_source(checkpoint, name, tag, pretrained_dir, device)
    named = origin.get("checkpoint") or f"{ckpt['model_name']}/{origin['pretrained']}"
    if isinstance(model, MultiExit) or supported_executions(model):
        raise ConfigError(f"--anchor {text}: {ckpt['model_name']!r} is a dynamic model (it "
                          f"{'has early exits' if isinstance(model, MultiExit) else 'skips computation per input'}); "
                          "an anchor is the static network the evaluated model is measured against")
    if ckpt["num_classes"] != num_classes:
        raise ConfigError(f"--anchor {text}: {ckpt['num_classes']} classes, the evaluated model has {num_classes}")
    anchor_trained, _ = trained_preprocessing(ckpt, source)
    if anchor_trained.input_shape != trained.input_shape or not anchor_trained.same_transform(trained):
        raise ConfigError(f"--anchor {text}: trained on inputs {anchor_trained.describe()}, the evaluated model on "
                          f"{trained.describe()}; an anchor must read the same inputs")
    return Anchor(model=model, source=named, flops=full_flops(model))


def compare_with_anchor(call: Callable[[Tensor], Any], anchor: Anchor, evaluation: Dataset,
                        timed: Sequence[Tensor], *, accuracy: float, timed_flops: float, batch_size: int,
                        device: str | torch.device = "cpu", threads: int | None = None,
                        min_run_time: float = 0.3) -> dict[str, Any]:
    """The anchor scored on `evaluation` and timed against `call` in one run.

    Args:
        call: the evaluated model's rule, `(B, *input_shape) -> output`.
        anchor: the static network.
        evaluation: exactly the samples the evaluated model was scored on.
        timed: the batches the evaluated model was timed on.
        accuracy: the evaluated model's accuracy on `evaluation`.
        timed_flops: the evaluated model's mean FLOPs per sample over exactly `timed`.

    Returns:
        dict with `anchor` (its name), `anchor_accuracy`, `accuracy_vs_anchor` (evaluated
        minus anchor), `anchor_flops`, `speedup_flops_vs_anchor` (anchor FLOPs ÷
        `timed_flops`), `speedup_measured_vs_anchor` (anchor time ÷ evaluated time on
        `timed`), `realized_fraction_vs_anchor` (their ratio) and
        `speedup_vs_anchor_batch1` (the first `ANCHOR_BATCH1_SAMPLES` samples one
        at a time).
    """
    scored = evaluate(anchor.model, make_eval_loader(evaluation, batch_size), device)
    timed = [b.to(device) for b in timed]
    singles = [b[i:i + 1] for b in timed for i in range(b.shape[0])][:ANCHOR_BATCH1_SAMPLES]

    def over(fn: Callable[[Tensor], Any], batches: Sequence[Tensor]) -> Callable[[], None]:
        def run() -> None:
            for b in batches:
                fn(b)
        return run

    at_batch = compare({"model": over(call, timed), "anchor": over(anchor.model, timed)},
                       threads=threads, min_run_time=min_run_time)
    at_one = compare({"model": over(call, singles), "anchor": over(anchor.model, singles)},
                     threads=threads, min_run_time=min_run_time)
    measured = ratio(at_batch, "anchor", "model")
    by_flops = anchor.flops / timed_flops
    return {"anchor": anchor.source, "anchor_accuracy": scored["accuracy"],
            "accuracy_vs_anchor": accuracy - scored["accuracy"], "anchor_flops": anchor.flops,
            "speedup_flops_vs_anchor": by_flops, "speedup_measured_vs_anchor": measured,
            "realized_fraction_vs_anchor": measured / by_flops,
            "speedup_vs_anchor_batch1": ratio(at_one, "anchor", "model")}
