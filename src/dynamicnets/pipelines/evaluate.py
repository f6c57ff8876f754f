"""Score a trained checkpoint: accuracy, per-sample FLOPs and measured latency.

The inputs are prepared as the model was trained (the checkpoint's preprocessing, applied
to whatever data source is read), the split scored is said in the result (`scored_on`),
and timings are taken on named samples (`timed_samples`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..data import make_eval_loader
from ..protocols import CalibratableGates, MultiExit, SkipsComputation
from ..errors import ConfigError
from ..gates.thresholds import GatePolicy
from ..inference import ExitPolicy, run_early_exit
from ..inference.cost_spread import check_confidence, check_eval_size
from ..inference.gate_rate import fit_gate_rate
from ..layers.slimmable import WidthLadder
from ..models.skipping.gated_resnet import GatedResNet
from ..models.spatial.dynamic_resolution import DynamicResolutionNet
from ..models.transformers import TOKEN_PRUNING
from ..models.width.dsnet import DSNet
from ..flops import counted_flops
from ..profiling.latency import measure, per_sample_ms
from ..training.evaluate import evaluate
from ..training.trainer import resolve_device
from .checkpoint_data import SPLITS, check_split, load_checkpoint_data, trained_preprocessing  # noqa: F401
from .checkpoints import check_shipped_weights_source, load_model_source
from .early_exit import (
    DEFAULT_TIMED_SAMPLES,
    EarlyExitRequest,
    evaluate_anytime,
    evaluate_early_exit,
    split_for_calibration,
    spread_report,
    timed_batches,
)
from .cascade_budget import cascade_width_histogram, fit_cascade_budget
from .eval_anchor import Anchor, compare_with_anchor, load_anchor
from .zoo_timing import mean_flops as timed_mean_flops
from .policy_budget import PolicyBound
from .resolution_budget import fit_resolution_budget, resolution_histogram
from .token_budget import fit_token_budget
from .width_budget import fit_width_budget, width_histogram

@dataclass
class EvalRequest:
    """What `dynamicnets eval` asks for.

    Attributes:
        checkpoint: a `best.pt` / `last.pt` written by the trainer, or its run folder (or give `model` and
            `pretrained`).
        model: with `pretrained`: the registered model whose shipped weights to score.
        pretrained: the shipped weights' tag (e.g. `cifar10`); `True`: the model's only
            or default tag.
        pretrained_dir: the folder of shipped weights (default: the package's own).
        data: data spec to score on; `None`: the one the checkpoint was trained on
            (shipped weights carry no data path: give it).
        split: one of `SPLITS`.
        batch_size: samples per batch for inference and timing.
        threads: CPU threads for timing; `None` keeps the current number.
        device: `cpu`, `cuda` or `auto`.
        min_run_time: seconds of timed calls per callable and round.
        early_exit: the exit rule of a multi-exit model.
        anytime: multi-exit models: score every exit on its own as well (alone, it needs
            no exit rule).
        gate_rate: gated ResNets: calibrate every gate to this execution rate.
        gate_max_flops: gated ResNets: a per-sample FLOPs cap (`GatePolicy.max_flops`) on
            the gates' rule (trained, or fitted by `gate_rate`). Other families take their
            cap in `early_exit.max_flops`.
        gate_calibration_samples: at most this many samples fit the gate thresholds.
        confidence: fit a budget (`early_exit`) or the gate rates so that the cost they
            promise holds on a fresh batch of `eval_size` samples with about this
            probability, in `(0, 1)`; `None`: on the calibration samples (about half the
            time on new data). Overrides `early_exit.confidence` when given.
        eval_size: that batch's size; `None`: the number of scored samples.
        timed_samples: how many of the first scored samples are timed; `None`: all.
        anchor: a static network to measure the model against (a checkpoint or run folder,
            or `NAME:TAG` of shipped weights): scored on the same samples, timed in the same
            run (see `eval_anchor`).
    """

    checkpoint: str | None = None
    model: str | None = None
    pretrained: str | bool | None = None
    pretrained_dir: str | None = None
    data: str | None = None
    split: str = "val"
    batch_size: int = 256
    threads: int | None = None
    device: str = "cpu"
    min_run_time: float = 0.3
    early_exit: EarlyExitRequest | None = None
    anytime: bool = False
    gate_rate: float | None = None
    gate_max_flops: float | None = None
    gate_calibration_samples: int = 2048
    confidence: float | None = None
    eval_size: int | None = None
    timed_samples: int | None = DEFAULT_TIMED_SAMPLES
    anchor: str | None = None

    def __post_init__(self) -> None:
        check_split(self.split)
        check_confidence(self.confidence, "--confidence")
        check_eval_size(self.eval_size, "--eval-size")
        check_shipped_weights_source(self.checkpoint, self.model, self.pretrained, self.data, "eval")
        if self.timed_samples is not None and self.timed_samples < 1:
            raise ConfigError(f"--timed-samples: expected a positive count, got {self.timed_samples}")


def full_flops_per_sample(model: torch.nn.Module, input_shape: tuple[int, ...], device="cpu") -> float:
    """FLOPs of one sample through the whole network, counted by FlopCounterMode.

    Models that skip parts of themselves per sample (layer skipping, halting, skipped
    state updates) define `full_flops(input_shape)`, the cost with nothing skipped; a
    plain forward of a zero input would count whatever that input's gates decided.
    """
    if isinstance(model, SkipsComputation):
        return float(model.full_flops(tuple(input_shape)))
    x = torch.zeros((1, *input_shape), device=device)
    return float(counted_flops(model, x))


def evaluate_checkpoint(request: EvalRequest) -> dict[str, Any]:
    """Accuracy and costs of `request.checkpoint` (or of shipped pretrained weights) on a
    split of its (or another) data set.

    The inputs are prepared with the checkpoint's preprocessing whatever `request.data`
    reads (converted, or a `DataError` when that cannot be done).

    Returns:
        dict with what was evaluated (`checkpoint`, or `pretrained`, `weights` and
        `sha256` for shipped weights; `model`, `data`, `split`, `scored_on`: the split in
        words with its size, `preprocessing` and `preprocessing_converted`), `samples`,
        `accuracy`, `exit_accuracy`, `mean_flops`, `full_flops`, `speedup_flops` (full ÷
        mean over every scored sample), `timed_samples`, `latency_ms_per_sample` (over
        those samples in batches of `batch_size`) and `latency_ms_batch1`; multi-exit
        models add the exit rule's figures (see `evaluate_early_exit`); an `anchor` adds
        its figures on the same samples (see `compare_with_anchor`).

    Raises:
        CheckpointError: the checkpoint is unreadable or does not fit its model, or a
            shipped weight file is missing or fails its sha256 check.
        DataError: the data cannot be read, has other classes, or cannot be prepared as
            the model was trained.
        ConfigError: an option does not fit the model (`--anytime` without exits, no
            exit rule for a multi-exit model, ...).
    """
    device = resolve_device(request.device, what="--device")
    model, ckpt, source, origin = load_model_source(request.checkpoint, request.model, request.pretrained,
                                                    request.pretrained_dir, device)
    if request.early_exit is not None and not isinstance(model, (MultiExit, DynamicResolutionNet, DSNet,
                                                                 WidthLadder, *TOKEN_PRUNING)):
        raise ConfigError(
            f"--budget/--budget-ms/--thresholds: {source} holds {ckpt['model_name']!r}, a model "
            f"without early exits, a resolution predictor, a width gate, slimmable widths or token pruning, so "
            f"there is no rule to fit; drop the option"
        )
    prepared = load_checkpoint_data(ckpt, source, request.data, request.split)
    bundle, dataset, seed = prepared.bundle, prepared.dataset, prepared.seed
    anchor = None if request.anchor is None else load_anchor(
        request.anchor, prepared.trained, bundle.num_classes,
        lambda net: full_flops_per_sample(net, bundle.input_shape, device),
        pretrained_dir=request.pretrained_dir, device=device)
    described = {**origin, "model": ckpt["model_name"], "data": prepared.spec,
                 "split": request.split, "scored_on": prepared.scored_on,
                 "preprocessing": f"{prepared.trained.describe()} "
                                  f"({prepared.origin if request.checkpoint else 'recorded with the weights'})",
                 "preprocessing_converted": prepared.converted}
    if request.gate_rate is not None and not 0.0 < request.gate_rate <= 1.0:
        raise ConfigError(f"--gate-rate: expected an execution rate in (0, 1], got {request.gate_rate}")
    if request.gate_rate is not None and not isinstance(model, CalibratableGates):
        raise ConfigError(
            f"--gate-rate: {type(model).__name__} has no layer-skipping gates (expected a gated ResNet: "
            "skipnet_resnet, convnet_aig_resnet or blockdrop_resnet)"
        )
    if request.gate_max_flops is not None and not isinstance(model, GatedResNet):
        raise ConfigError(f"--max-flops: {ckpt['model_name']!r} has no layer-skipping gates; for early exits, "
                          "resolution predictors, DS-Net and slimmable networks it caps the rule fitted by --budget "
                          "or --budget-ms or given by --thresholds: add one of them")
    if isinstance(model, MultiExit):
        return {**described, **_evaluate_multi_exit(model, bundle, dataset, request, seed, anchor, device)}
    if request.anytime:
        raise ConfigError(f"--anytime: {type(model).__name__} has a single exit; anytime evaluation scores "
                          "every exit of a multi-exit model")
    fitted = request.gate_rate is not None or request.early_exit is not None
    if not fitted and (request.confidence is not None or request.eval_size is not None):
        raise ConfigError("--confidence/--eval-size: nothing is fitted to a budget; use them with --budget, "
                          "--budget-ms (multi-exit models, resolution predictors, DS-Net, slimmable networks) or "
                          "--gate-rate (gated ResNets)")
    extra, runner = {}, model
    if request.gate_rate is not None:
        dataset, extra = _calibrate_gates(model, bundle, dataset, request, seed, device)
    if request.gate_max_flops is not None:  # the gates' rule (folded into the logits by a gate rate) under a cap
        runner = PolicyBound(model, GatePolicy.constant(0.0, model.num_gated_blocks,
                                                        max_flops=request.gate_max_flops))
        extra["max_flops"] = request.gate_max_flops
    if request.early_exit is not None:  # a resolution or width predictor, or a width cascade: fit to the budget
        dsnet, slimmable = isinstance(model, DSNet), isinstance(model, WidthLadder)
        tokens = isinstance(model, TOKEN_PRUNING)
        what = ("width policy" if dsnet else "width cascade" if slimmable else "keep ratio" if tokens
                else "resolution policy")
        calibration, dataset, protocol = _calibration_split(bundle, dataset, request.split, seed, what)
        fit = (fit_width_budget if dsnet else fit_cascade_budget if slimmable else fit_token_budget if tokens
               else fit_resolution_budget)
        early = request.early_exit
        if early.thresholds is None and early.budget_ms is None:  # a FLOPs budget: fit it for this many samples
            early = replace(early, confidence=request.confidence or early.confidence,
                            eval_size=request.eval_size or early.eval_size or len(dataset))
        runner, extra = fit(model, calibration, early, bundle.input_shape, request.batch_size, device)
        extra["protocol"] = protocol
    if isinstance(model, DynamicResolutionNet):
        extra["resolution_histogram"] = resolution_histogram(runner, dataset, request.batch_size, device)
    if isinstance(model, DSNet):
        extra["width_histogram"] = width_histogram(runner, dataset, request.batch_size, device)
    elif isinstance(model, WidthLadder) and request.early_exit is not None:  # where the cascade ended
        with torch.no_grad():
            extra["width_histogram"] = cascade_width_histogram(runner, dataset, request.batch_size, device,
                                                               model.widths)
    loader = make_eval_loader(dataset, request.batch_size)
    metrics = evaluate(runner, loader, device)
    full = full_flops_per_sample(model, bundle.input_shape, device)

    batches = [b.to(device) for b in timed_batches(dataset, request.timed_samples, request.batch_size)]
    timed = sum(b.shape[0] for b in batches)

    def run_timed() -> None:
        for b in batches:
            runner(b)

    at_batch = measure(run_timed, threads=request.threads, min_run_time=request.min_run_time)
    at_one = measure(runner, batches[0][:1], threads=request.threads, min_run_time=request.min_run_time)
    mean_flops = metrics["mean_flops"] if metrics["mean_flops"] is not None else full
    if anchor is not None:
        extra.update(compare_with_anchor(
            runner, anchor, dataset, batches, accuracy=metrics["accuracy"],
            timed_flops=full if metrics["mean_flops"] is None else timed_mean_flops(runner, batches),
            batch_size=request.batch_size,
            device=device, threads=request.threads, min_run_time=request.min_run_time))
    return {
        **described,
        "samples": metrics["samples"],
        "accuracy": metrics["accuracy"],
        "exit_accuracy": metrics["exit_accuracy"],
        "block_execution_rate": metrics["block_execution_rate"],
        "mean_flops": mean_flops,
        "full_flops": full,
        "speedup_flops": full / mean_flops,
        "batch_size": batches[0].shape[0],
        "timed_samples": timed,
        "latency_ms_per_sample": per_sample_ms(at_batch, timed),
        "latency_ms_batch1": at_one.median_ms,
        "threads": at_batch.threads,
        **extra,
    }


def _calibration_split(bundle, dataset, split: str, seed: int, what: str):
    """`(fit on, score on, protocol)`: halves of the split, or validation -> test."""
    if split in ("val", "all"):
        calibration, evaluation = split_for_calibration(dataset, seed)
        name = "the validation split" if split == "val" else "all samples"
        return calibration, evaluation, f"{what} fitted on one seeded half of {name}, scored on the other"
    return bundle.val, dataset, f"{what} fitted on the validation split, scored on the test split"


def _calibrate_gates(model, bundle, dataset, request: EvalRequest, seed: int, device) -> tuple[Any, dict]:
    """Fit the gate thresholds to `request.gate_rate` on data the model is not scored on;
    returns the data to score and what to report."""
    calibration, evaluation, protocol = _calibration_split(bundle, dataset, request.split, seed, "gate thresholds")
    count = min(len(calibration), request.gate_calibration_samples)
    x = torch.stack([calibration[i][0] for i in range(count)]).to(device)
    fit = fit_gate_rate(model, x, request.gate_rate, confidence=request.confidence,
                        eval_size=request.eval_size or len(evaluation))
    return evaluation, {"gate_rate": request.gate_rate, "gate_calibration_samples": count, "protocol": protocol,
                        "budget_confidence": request.confidence, "gate_rate_scale": fit.rate_scale,
                        **spread_report(fit.spread, fit.budget_flops)}


def _evaluate_multi_exit(model, bundle, dataset, request: EvalRequest, seed: int, anchor: Anchor | None,
                         device) -> dict[str, Any]:
    """Thresholds fitted on validation data, scored on data they were not fitted on;
    given thresholds (or `anytime` alone) score the whole split."""
    if request.early_exit is None:
        if not request.anytime:
            raise ConfigError("a multi-exit model needs an exit rule (--budget, --budget-ms or --thresholds), "
                              "or --anytime for the accuracy and cost of every exit")
        if request.confidence is not None or request.eval_size is not None:
            raise ConfigError("--confidence/--eval-size: nothing is fitted to a budget; add --budget or --budget-ms")
        if anchor is not None:
            raise ConfigError("--anchor: --anytime alone runs no exit rule to time against the anchor; add "
                              "--budget, --budget-ms or --thresholds")
        return {"protocol": "every exit on its own, on the whole split",
                **evaluate_anytime(model, dataset, bundle.input_shape, request.batch_size)}
    early = replace(request.early_exit, batch_size=request.batch_size, threads=request.threads,
                    min_run_time=request.min_run_time, timed_samples=request.timed_samples)
    if request.confidence is not None or request.eval_size is not None:
        early = replace(early, confidence=request.confidence or early.confidence,
                        eval_size=request.eval_size or early.eval_size)
    if early.thresholds is not None:
        calibration, evaluation, protocol = None, dataset, "thresholds given, nothing fitted; the whole split scored"
    else:
        calibration, evaluation, protocol = _calibration_split(bundle, dataset, request.split, seed, "thresholds")
    result = evaluate_early_exit(model, calibration, evaluation, early, bundle.input_shape)
    if not request.anytime:
        result.pop("anytime")
    if anchor is not None:
        policy = ExitPolicy(early.policy, result["thresholds"], result["max_flops"])
        costs = result["exit_costs"]
        result.update(compare_with_anchor(
            lambda x: run_early_exit(model, x, policy, costs=costs), anchor, evaluation,
            timed_batches(evaluation, request.timed_samples, request.batch_size), accuracy=result["accuracy"],
            timed_flops=result["timing"]["mean_flops"], batch_size=request.batch_size, device=device,
            threads=request.threads, min_run_time=request.min_run_time))
    return {"protocol": protocol, "threads": request.threads or torch.get_num_threads(), **result}
