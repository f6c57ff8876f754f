"""Inference: turning early-exit decisions into real savings.

- `run_early_exit` (alias `run`): the compact executor; samples that exit leave the batch.
- `run_all_then_select`: the run-everything reference it is tested against.
- `ExitPolicy`: criterion, per-exit thresholds, optional `max_flops` cap.
- `calibrate` / `calibrate_thresholds`: thresholds for a mean-FLOPs budget; with
  `confidence=`, a budget met on a fresh batch of `eval_size` samples with that probability.
- `CostSpread` / `cost_spread`: the mean cost a calibrated policy is expected to spend on
  fresh data, its standard deviation and upper confidence bound (every calibration reports it).
- `anytime_table`, `collect_exit_logits`: per-exit accuracy and cost.
- `calibrate_gate_rate`: thresholds of layer-skipping gates for a target execution rate
  (folded into the gate biases); `calibrate_gate_policy`: the same fit as a `GatePolicy`;
  `fit_gate_rate`: the same fit reporting its cost spread (`GateRateFit`).
- `fastest_block_strategies`: for a spatially sparse model, the fastest exact execution
  (dense, gathered positions, gathered tiles) of each gated block, measured.
- `TokenPolicy`: which tokens a token-pruning transformer keeps (a keep ratio or a score
  threshold per stage) and how samples with different token counts share a batch;
  `calibrate_token_policy` fits one to a mean-FLOPs budget.
- `ResolutionPolicy`: how a dynamic-resolution network picks each sample's resolution (bias
  per resolution on its predictor's logits, a FLOPs cap); `calibrate_resolution_policy`
  fits the bias to a mean-FLOPs budget.
- `WidthPolicy`: a compute cap on the width of slimmable and DS-Net models, and a bias on
  DS-Net's gate scores; `calibrate_width_policy` fits the bias to a mean-FLOPs budget;
  `worst_case_flops`: the per-sample cost no input can exceed under a policy's cap.
- `fit_width_cascade`: the chain of a slimmable network's widths (run as a `WidthCascade`)
  and its confidence thresholds with the best calibration accuracy within a mean-FLOPs
  budget; `collect_width_logits` gathers its calibration logits.
"""
from .calibrate import (
    BudgetCalibration,
    anytime_table,
    calibrate,
    calibrate_thresholds,
    collect_exit_logits,
    exit_decisions,
    geometric_fractions,
    thresholds_for_fractions,
)
from .cost_spread import CostSpread, cost_spread
from .gate_rate import GateRateFit, calibrate_gate_policy, calibrate_gate_rate, fit_gate_rate, gate_logit_layers
from .executor import ExitResult, run_all_then_select, run_early_exit
from .policy import ExitPolicy
from .resolution_policy import ResolutionPolicy, calibrate_resolution_policy
from .sparse_strategy import fastest_block_strategies
from .token_calibration import TokenCalibration, calibrate_token_policy
from .token_policy import TokenPolicy
from .width_calibration import calibrate_width_policy
from .width_cascade_fit import WidthCascadeFit, collect_width_logits, fit_width_cascade
from .width_policy import WidthPolicy
from .worst_case import worst_case_flops

run = run_early_exit

__all__ = [
    "BudgetCalibration",
    "CostSpread",
    "GateRateFit",
    "ExitPolicy",
    "ExitResult",
    "ResolutionPolicy",
    "calibrate_resolution_policy",
    "calibrate_width_policy",
    "anytime_table",
    "calibrate",
    "calibrate_gate_rate",
    "calibrate_gate_policy",
    "calibrate_thresholds",
    "collect_exit_logits",
    "cost_spread",
    "exit_decisions",
    "fastest_block_strategies",
    "fit_gate_rate",
    "gate_logit_layers",
    "geometric_fractions",
    "run",
    "run_all_then_select",
    "run_early_exit",
    "thresholds_for_fractions",
    "TokenCalibration",
    "TokenPolicy",
    "calibrate_token_policy",
    "WidthCascadeFit",
    "WidthPolicy",
    "collect_width_logits",
    "fit_width_cascade",
    "worst_case_flops",
]
