"""Score a trained checkpoint: accuracy, per-sample FLOPs and measured latency."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..data import load_data, make_eval_loader
from ..errors import ConfigError, DataError
from ..inference.gate_rate import calibrate_gate_rate
from ..profiling.flops import counted_flops
from ..profiling.latency import measure, per_sample_ms
from ..training.evaluate import evaluate
from ..training.trainer import resolve_device
from .checkpoints import load_trained_model
from .early_exit import EarlyExitRequest, evaluate_early_exit, split_for_calibration


@dataclass
class EvalRequest:
    """What `dynamicnets eval` asks for."""

    checkpoint: str
    data: str | None = None  # default: the spec the checkpoint was trained on
    split: str = "val"  # "val" (seeded split of the training set) or "test"
    batch_size: int = 256
    threads: int | None = None
    device: str = "cpu"
    min_run_time: float = 0.3
    early_exit: EarlyExitRequest | None = None  # required for multi-exit models
    gate_rate: float | None = None  # gated ResNets: calibrate every gate to this execution rate
    gate_calibration_samples: int = 2048  # at most this many samples fit the gate thresholds


def full_flops_per_sample(model: torch.nn.Module, input_shape: tuple[int, ...], device="cpu") -> float:
    """FLOPs of one sample through the whole network, counted by FlopCounterMode.

    Models that skip parts of themselves per sample (layer skipping, halting, skipped
    state updates) define `full_flops(input_shape)`, the cost with nothing skipped; a
    plain forward of a zero input would count whatever that input's gates decided.
    """
    if hasattr(model, "full_flops"):
        return float(model.full_flops(tuple(input_shape)))
    x = torch.zeros((1, *input_shape), device=device)
    return float(counted_flops(model, x))


def evaluate_checkpoint(request: EvalRequest) -> dict[str, Any]:
    """Accuracy and costs of `request.checkpoint` on a split of its (or another) data set.

    Returns:
        dict with `accuracy`, `exit_accuracy`, `mean_flops`, `full_flops`,
        `speedup_flops` (full ÷ mean), `latency_ms_per_sample` (at `batch_size`),
        `latency_ms_batch1`, `samples`, and what was evaluated.
    """
    device = resolve_device(request.device, what="--device")
    model, ckpt = load_trained_model(request.checkpoint, device)
    if request.early_exit is not None and not hasattr(model, "num_exits"):
        raise ConfigError(
            f"--budget/--budget-ms/--thresholds: {request.checkpoint} holds {ckpt['model_name']!r}, a model "
            f"without early exits, so there is no exit rule to set; drop the option"
        )
    config = ckpt.get("config", {})
    spec = request.data or ckpt.get("data")
    bundle = load_data(spec, val_size=config.get("val_size", 0.1), seed=config.get("seed", 0), augment=False)
    if tuple(bundle.input_shape) != tuple(ckpt["input_shape"]) or bundle.num_classes != ckpt["num_classes"]:
        raise DataError(
            f"{spec}: inputs {tuple(bundle.input_shape)} with {bundle.num_classes} classes, but "
            f"{request.checkpoint} was trained on {tuple(ckpt['input_shape'])} with {ckpt['num_classes']} classes"
        )
    dataset = bundle.val if request.split == "val" else bundle.test
    if dataset is None:
        raise DataError(f"{spec}: has no test split (the official test files are not in that folder)")
    described = {"checkpoint": str(Path(request.checkpoint)), "model": ckpt["model_name"], "data": spec}
    if hasattr(model, "num_exits"):
        return {**described, **_evaluate_multi_exit(model, bundle, dataset, request, config.get("seed", 0))}
    extra = {}
    if request.gate_rate is not None:
        dataset, extra = _calibrate_gates(model, bundle, dataset, request, config.get("seed", 0), device)
    loader = make_eval_loader(dataset, request.batch_size)
    metrics = evaluate(model, loader, device)
    full = full_flops_per_sample(model, bundle.input_shape, device)

    batch = torch.stack([dataset[i][0] for i in range(min(request.batch_size, len(dataset)))]).to(device)
    at_batch = measure(model, batch, threads=request.threads, min_run_time=request.min_run_time)
    at_one = measure(model, batch[:1], threads=request.threads, min_run_time=request.min_run_time)
    mean_flops = metrics["mean_flops"] if metrics["mean_flops"] is not None else full
    return {
        **described,
        "split": request.split,
        "samples": metrics["samples"],
        "accuracy": metrics["accuracy"],
        "exit_accuracy": metrics["exit_accuracy"],
        "block_execution_rate": metrics["block_execution_rate"],
        "mean_flops": mean_flops,
        "full_flops": full,
        "speedup_flops": full / mean_flops,
        "batch_size": batch.shape[0],
        "latency_ms_per_sample": per_sample_ms(at_batch, batch.shape[0]),
        "latency_ms_batch1": at_one.median_ms,
        "threads": at_batch.threads,
        **extra,
    }


def _calibration_split(bundle, dataset, split: str, seed: int, what: str):
    """`(fit on, score on, protocol)`: halves of the validation split, or validation -> test."""
    if split == "val":
        calibration, evaluation = split_for_calibration(dataset, seed)
        return calibration, evaluation, f"{what} fitted on one seeded half of the validation split, scored on the other"
    return bundle.val, dataset, f"{what} fitted on the validation split, scored on the test split"


def _calibrate_gates(model, bundle, dataset, request: EvalRequest, seed: int, device) -> tuple[Any, dict]:
    """Fit the gate thresholds to `request.gate_rate` on data the model is not scored on;
    returns the data to score and what to report."""
    if not 0.0 < request.gate_rate <= 1.0:
        raise ConfigError(f"--gate-rate: expected an execution rate in (0, 1], got {request.gate_rate}")
    if not hasattr(model, "gate_logit_layers"):
        raise ConfigError(
            f"--gate-rate: {type(model).__name__} has no layer-skipping gates (expected a gated ResNet: "
            "skipnet_resnet, convnet_aig_resnet or blockdrop_resnet)"
        )
    calibration, evaluation, protocol = _calibration_split(bundle, dataset, request.split, seed, "gate thresholds")
    count = min(len(calibration), request.gate_calibration_samples)
    x = torch.stack([calibration[i][0] for i in range(count)]).to(device)
    calibrate_gate_rate(model, x, request.gate_rate)
    return evaluation, {"gate_rate": request.gate_rate, "gate_calibration_samples": count, "protocol": protocol}


def _evaluate_multi_exit(model, bundle, dataset, request: EvalRequest, seed: int) -> dict[str, Any]:
    """Thresholds fitted on validation data, scored on data they were not fitted on."""
    if request.early_exit is None:
        raise ConfigError("a multi-exit model needs an exit rule: --budget, --budget-ms or --thresholds")
    calibration, evaluation, protocol = _calibration_split(bundle, dataset, request.split, seed, "thresholds")
    early = replace(request.early_exit, batch_size=request.batch_size, threads=request.threads,
                    min_run_time=request.min_run_time)
    result = evaluate_early_exit(model, calibration, evaluation, early, bundle.input_shape)
    return {"split": request.split, "protocol": protocol, "threads": request.threads or torch.get_num_threads(),
            **result}
