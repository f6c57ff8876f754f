"""`dynamicnets export --budget` / `--gate-rate`: fit the model's decision rule to a mean-FLOPs
budget (or its gates to an execution rate) on the validation split it was trained with,
then export that rule with the graphs.

The same fits as `dynamicnets eval --budget`: exit thresholds for a multi-exit model, a
width cascade (its chain and thresholds) for a slimmable network, a bias per width for
DS-Net's gate, a bias per resolution for a dynamic-resolution network, a keep ratio for a
token-pruning transformer (priced on one sample: every sample costs the same). Eval fits on one
half of the split and scores the other; an export fits on the whole split and reports
what the rule does there (`fitted_accuracy`, `fitted_mean_flops`), with the spread to
expect on fresh data. `--gate-rate` fits a gated ResNet's gate thresholds as `eval
--gate-rate` does (`fit_gate_rate`, at most `GATE_SAMPLES` validation samples): the fitted
thresholds are folded into the gates' logit biases, so the exported gates decide at 0.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..data import make_eval_loader
from ..errors import ConfigError
from ..gates.thresholds import GatePolicy
from ..inference import collect_exit_logits
from ..inference.gate_rate import fit_gate_rate
from ..layers.slimmable import WidthLadder
from ..models.spatial.dynamic_resolution import DynamicResolutionNet
from ..models.transformers import TOKEN_PRUNING
from ..models.width.dsnet import DSNet
from ..profiling.report import format_flops
from ..protocols import CalibratableGates, MultiExit
from ..training.evaluate import evaluate
from .cascade_budget import fit_cascade_budget
from .checkpoint_data import load_checkpoint_data
from .early_exit import EarlyExitRequest, choose_policy, reference_cost, run_compact, spread_report, timed_batches
from .policy_budget import PolicyBound
from .resolution_budget import fit_resolution_budget
from .token_budget import fit_token_budget
from .width_budget import fit_width_budget

GATE_SAMPLES = 2048  # as `dynamicnets eval --gate-rate`
# what the export summary and manifest keep of a fit's report (plain JSON values)
REPORTED = ("budget_flops", "budget_fraction", "policy", "cascade_widths", "thresholds", "budget_confidence",
            "expected_cost", "width_policy", "resolution_policy", "token_policy")


@dataclass
class FittedRule:
    """A decision rule fitted for export.

    Attributes:
        model: what to export (the model itself, or for a slimmable network the
            `WidthCascade` over its widths).
        policy: the rule `export_model` ships (`ExitPolicy`, `WidthPolicy`,
            `ResolutionPolicy`, `TokenPolicy`).
        report: plain values for the summary and the manifest: the budget, the rule in
            words, `fitted_on` (data and split), `fitted_samples`, `fitted_accuracy` and
            `fitted_mean_flops` on them, `expected_cost` on fresh data.
    """

    model: nn.Module
    policy: Any
    report: dict[str, Any]


def fits_a_budget(model: nn.Module) -> bool:
    """Whether `export --budget` can fit a rule for `model`."""
    return isinstance(model, (MultiExit, DSNet, WidthLadder, DynamicResolutionNet, *TOKEN_PRUNING))


def fit_rule_for_export(model: nn.Module, ckpt: dict[str, Any], source: str, data: str | None,
                        request: EarlyExitRequest, device="cpu") -> FittedRule:
    """Fit `request`'s FLOPs budget on the validation split of `data` (default: the data the
    checkpoint was trained on), prepared as the model was trained.

    Args:
        model: the trained model in eval mode.
        ckpt: its checkpoint fields (`load_model_source`).
        source: its name in messages.
        data: a data spec, or None for the checkpoint's own (shipped weights need one).
        request: `budget_flops` or `budget_fraction`, the criterion (multi-exit models),
            `max_flops`, `confidence` and `eval_size` (default with `confidence`: the
            number of validation samples), `batch_size`.
        device: where the calibration passes run.

    Raises:
        ConfigError: a model without a rule to fit, or a budget the model cannot meet.
        DataError: the data cannot be read or prepared as the model was trained.
    """
    name = ckpt.get("model_name", type(model).__name__)
    if not fits_a_budget(model):
        raise ConfigError(f"--budget: {source} holds {name!r}, which has no exit thresholds, width, resolution or "
                          "keep-ratio rule to fit (gated ResNets take --gate-rate or --thresholds); drop --budget")
    if request.budget_flops is None and request.budget_fraction is None:
        raise ConfigError("--budget: an export fits a mean-FLOPs budget, e.g. --budget 40M or --budget 50%")
    if not isinstance(model, MultiExit) and request.policy != "maxprob":
        what = ("a width cascade's thresholds are max-probabilities" if isinstance(model, WidthLadder) and not (
            isinstance(model, DSNet)) else "its rule is a keep ratio" if isinstance(model, TOKEN_PRUNING)
            else "its rule is a bias on a predictor's scores, not an exit criterion")
        raise ConfigError(f"--criterion {request.policy}: {name!r} takes none ({what}); drop --criterion")
    prepared = load_checkpoint_data(ckpt, source, data, "val")
    calibration, shape = prepared.dataset, tuple(prepared.bundle.input_shape)
    if request.eval_size is None:  # the spread (and a confidence) is for a batch the size of the split
        request = replace(request, eval_size=len(calibration))
    if isinstance(model, MultiExit):
        fitted = _fit_exits(model, calibration, request, shape)
    else:
        fit = (fit_width_budget if isinstance(model, DSNet) else fit_cascade_budget if isinstance(model, WidthLadder)
               else fit_token_budget if isinstance(model, TOKEN_PRUNING) else fit_resolution_budget)
        bound, report = fit(model, calibration, request, shape, request.batch_size, device)
        with torch.no_grad():
            metrics = evaluate(bound, make_eval_loader(calibration, request.batch_size), device)
        report = {**report, "fitted_accuracy": metrics["accuracy"], "fitted_mean_flops": metrics["mean_flops"]}
        fitted = FittedRule(bound.model, bound.policy, report)
    fitted.report = {**{k: fitted.report[k] for k in (*REPORTED, "fitted_accuracy", "fitted_mean_flops")
                        if fitted.report.get(k) is not None},
                     "fitted_on": _split_words(prepared), "fitted_samples": len(calibration)}
    return fitted


def _split_words(prepared) -> str:
    return f"the validation split of {prepared.spec} (val_size={prepared.val_size}, seed={prepared.seed})"


def _fit_exits(model: nn.Module, calibration, request: EarlyExitRequest, shape: tuple[int, ...]) -> FittedRule:
    costs = list(model.exit_costs(shape))
    logits, targets = collect_exit_logits(model, make_eval_loader(calibration, request.batch_size))
    sample = timed_batches(calibration, 1, 1)[0]
    policy, info = choose_policy(model, request, logits, targets, costs, sample, len(calibration))
    with torch.no_grad():
        scored = run_compact(model, calibration, policy, costs, request.batch_size)
    full = reference_cost(model, costs, shape)
    words = f"{request.policy} thresholds " + ", ".join(f"{t:.4g}" for t in policy.thresholds)
    if policy.max_flops is not None:
        words += f"; cap {format_flops(policy.max_flops)} FLOPs"
    report = {"budget_flops": request.resolved_budget(full), "budget_fraction": request.budget_fraction,
              "policy": words, "thresholds": list(policy.thresholds), "budget_confidence": request.confidence,
              "expected_cost": info.get("expected_cost"), "fitted_accuracy": scored["accuracy"],
              "fitted_mean_flops": scored["mean_flops"]}
    return FittedRule(model, policy, report)


def fit_gates_for_export(model: nn.Module, ckpt: dict[str, Any], source: str, data: str | None, rate: float, *,
                         max_flops: float | None = None, confidence: float | None = None,
                         eval_size: int | None = None, batch_size: int = 256, device="cpu") -> FittedRule:
    """Fit every gate of a gated ResNet to execute its block for `rate` of the validation
    samples (in place: the thresholds go into the gate biases), and the `GatePolicy` to
    export with it (threshold 0 for every gate, `max_flops` as a cap).

    Raises:
        ConfigError: a model without threshold gates, a rate outside `(0, 1]`.
        DataError: the data cannot be read or prepared as the model was trained.
    """
    name = ckpt.get("model_name", type(model).__name__)
    if not isinstance(model, CalibratableGates):
        raise ConfigError(f"--gate-rate: {source} holds {name!r}, which has no layer-skipping gates to fit "
                          "(ConvNet-AIG, SkipNet); drop --gate-rate")
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"--gate-rate: expected an execution rate in (0, 1], got {rate}")
    prepared = load_checkpoint_data(ckpt, source, data, "val")
    calibration = prepared.dataset
    count = min(len(calibration), GATE_SAMPLES)
    x = torch.stack([calibration[i][0] for i in range(count)]).to(device)
    fit = fit_gate_rate(model, x, rate, confidence=confidence, eval_size=eval_size or len(calibration))
    caps = {} if max_flops is None else {"max_flops": max_flops}
    policy = GatePolicy((0.0,) * model.num_gated_blocks, **caps)
    with torch.no_grad():
        metrics = evaluate(PolicyBound(model, policy), make_eval_loader(Subset(calibration, range(count)), batch_size),
                           device)
    report = {"gate_rate": rate, "budget_confidence": confidence, "gate_rate_scale": fit.rate_scale,
              "expected_cost": spread_report(fit.spread, fit.budget_flops)["expected_cost"],
              "policy": f"gates fitted to execute each block for {rate:g} of the samples"
                        + ("" if max_flops is None else f"; cap {format_flops(max_flops)} FLOPs"),
              "fitted_accuracy": metrics["accuracy"], "fitted_mean_flops": metrics["mean_flops"],
              "fitted_on": _split_words(prepared), "fitted_samples": count}
    return FittedRule(model, policy, {k: v for k, v in report.items() if v is not None})

