"""`dynamicnets export`: a trained checkpoint's dynamic model as deployable graphs.

Loads the checkpoint (or shipped weights), builds the decision policy the user asks for
(exit thresholds and a compute cap, gate thresholds, or a rule fitted to a mean-FLOPs
budget on the validation split: `export_budget`), exports every static piece (`dynamicnets.deploy`) with
the input preprocessing recorded in the manifest, then loads the folder back with its
engine and checks it against eager compact inference on a few inputs, so a broken export
is found at export time, not in deployment.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.preprocessing import trained_preprocessing
from ..deploy import DeployedModel, export_model, read_manifest
from ..deploy.export import MANIFEST, REJECTED_MANIFEST
from ..errors import ConfigError, ExportCheckError
from ..gates.thresholds import GatePolicy
from ..inference import ExitPolicy, run_early_exit
from ..inference.resolution_policy import ResolutionPolicy
from ..inference.token_policy import TokenPolicy
from ..inference.width_policy import WidthPolicy
from ..models.spatial.dynamic_resolution import DynamicResolutionNet
from ..models.transformers import TOKEN_PRUNING
from ..models.skipping.gated_resnet import GatedResNet
from ..models.width.dsnet import DSNet
from ..protocols import MultiExit
from .checkpoints import check_model_source, load_model_source
from .early_exit import POLICIES, EarlyExitRequest
from .export_budget import fit_gates_for_export, fit_rule_for_export


@dataclass
class ExportRequest:
    """What `dynamicnets export` was asked.

    Attributes:
        checkpoint: a `best.pt` / `last.pt`, or a run folder (or give `model` and
            `pretrained`).
        out_dir: the export folder.
        format: `"torch.export"` or `"onnx"`.
        criterion: early exits: the exit criterion.
        thresholds: early exits: `K - 1` exit thresholds; gated models: one per gate, or
            one for all. None: every sample to the last exit / the trained default.
        max_flops: a per-sample compute cap shipped with the policy.
        check_samples: random inputs the exported folder is checked on (0: no check).
        model: with `pretrained`: the registered model whose shipped weights to export.
        pretrained: the shipped weights' tag; `True`: the model's only or default tag.
        pretrained_dir: the folder of shipped weights (default: the package's own).
        budget_flops, budget_fraction: fit the rule to this mean FLOPs per sample (or
            fraction of the full cost) on the validation split instead of `thresholds`.
        data: the data spec the budget is fitted on (default: the checkpoint's own;
            required for shipped weights).
        confidence, eval_size: fit the budget so it holds on a fresh batch of
            `eval_size` samples with about this probability.
        batch_size: samples per calibration batch.
        gate_rate: gated ResNets: fit every gate to run its block for this fraction of
            the validation samples (instead of `thresholds`).
        keep_ratio: token-pruning transformers (DynamicViT, EViT): the keep ratio shipped,
            one for every stage or one per stage (default the model's own).
        say: called with one line as each phase starts (fitting, exporting, checking);
            None: silent.
    """

    checkpoint: str | None
    out_dir: str
    format: str = "torch.export"
    criterion: str = "maxprob"
    thresholds: list[float] | None = None
    max_flops: float | None = None
    check_samples: int = 8
    model: str | None = None
    pretrained: str | bool | None = None
    pretrained_dir: str | None = None
    budget_flops: float | None = None
    budget_fraction: float | None = None
    data: str | None = None
    confidence: float | None = None
    eval_size: int | None = None
    batch_size: int = 256
    gate_rate: float | None = None
    keep_ratio: list[float] | None = None
    say: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.keep_ratio, (int, float)):
            self.keep_ratio = [float(self.keep_ratio)]
        check_model_source(self.checkpoint, self.model, self.pretrained, "export")
        if self.criterion not in POLICIES:
            raise ConfigError(f"--criterion (--policy): expected one of {', '.join(POLICIES)}, got {self.criterion!r}")
        budget = self.budget_flops is not None or self.budget_fraction is not None
        given = [n for n, v in (("--budget", budget), ("--gate-rate", self.gate_rate is not None),
                                ("--thresholds", self.thresholds is not None),
                                ("--keep-ratio", self.keep_ratio is not None)) if v]
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(given)}: give one (--budget fits the thresholds or the keep ratio, "
                              f"--gate-rate the gates)")
        fits = budget or self.gate_rate is not None
        if fits and self.checkpoint is None and self.data is None:
            raise ConfigError("--data: shipped weights carry no data path; --budget/--gate-rate are fitted on the "
                              "validation split of the data they were trained on, e.g. "
                              "--data cifar10:path/to/cifar-10-batches-py")
        if not fits and (self.data is not None or self.confidence is not None or self.eval_size is not None):
            raise ConfigError("--data/--confidence/--eval-size: nothing is fitted without --budget or --gate-rate; "
                              "add one (e.g. --budget 50%) or drop them")

    def early_exit_request(self) -> EarlyExitRequest:
        """The budget as `EarlyExitRequest` (the fits of `eval --budget` take it)."""
        return EarlyExitRequest(policy=self.criterion, budget_flops=self.budget_flops,
                                budget_fraction=self.budget_fraction, max_flops=self.max_flops,
                                confidence=self.confidence, eval_size=self.eval_size, batch_size=self.batch_size)


def _policy(model: torch.nn.Module, request: ExportRequest, input_shape: tuple[int, ...]):
    name = getattr(model, "name", type(model).__name__)
    if request.keep_ratio is not None and not isinstance(model, TOKEN_PRUNING):
        raise ConfigError(f"--keep-ratio: model {name!r} prunes no tokens (DynamicViT and EViT do)")
    if isinstance(model, TOKEN_PRUNING):
        if request.thresholds is not None or request.max_flops is not None:
            raise ConfigError(f"--thresholds / --max-flops: model {name!r} keeps the same share of tokens in "
                              f"every sample when deployed; choose it with --keep-ratio")
        ratio = request.keep_ratio
        return model.default_policy() if ratio is None else TokenPolicy(keep_ratio=ratio[0] if len(ratio) == 1
                                                                       else tuple(ratio))
    if isinstance(model, MultiExit):
        thresholds = request.thresholds
        if thresholds is None:
            thresholds = [float("inf")] * (model.num_exits - 1)
        policy = ExitPolicy(request.criterion, list(thresholds), request.max_flops)
        policy.last_exit(list(model.exit_costs(input_shape)))  # a cap below the first exit: refused before writing
        return policy
    if isinstance(model, GatedResNet):
        thresholds = request.thresholds or [0.0]
        if len(thresholds) == 1:
            thresholds = thresholds * model.num_gated_blocks
        caps = {} if request.max_flops is None else {"max_flops": request.max_flops}
        return GatePolicy(tuple(thresholds), **caps).check(model.num_gated_blocks, "--thresholds", caps=tuple(caps))
    if isinstance(model, DynamicResolutionNet):
        if request.thresholds is not None:
            raise ConfigError(f"--thresholds: model {model.name!r} picks a resolution per sample and has no "
                              f"thresholds; --max-flops caps each sample's resolution")
        return ResolutionPolicy(max_flops=request.max_flops)
    if isinstance(model, DSNet):
        if request.thresholds is not None:
            raise ConfigError(f"--thresholds: model {getattr(model, 'name', 'DSNet')!r} picks a width per sample "
                              f"and has no thresholds; --max-flops caps each sample's width")
        return None if request.max_flops is None else WidthPolicy(max_flops=request.max_flops)
    if request.thresholds is not None or request.max_flops is not None:
        raise ConfigError(f"--thresholds / --max-flops: model {getattr(model, 'name', type(model).__name__)!r} "
                          "has no exits or gates to take them (a slimmable network's width is chosen at run "
                          "time, a spatial transformer's glimpse by its regressor)")
    return None


def _fitted_rule(model: torch.nn.Module, ckpt: dict[str, Any], source: str, request: ExportRequest):
    """The rule `--budget` or `--gate-rate` fits (`export_budget`), or None without either."""
    if request.budget_flops is not None or request.budget_fraction is not None:
        return fit_rule_for_export(model, ckpt, source, request.data, request.early_exit_request())
    if request.gate_rate is not None:
        return fit_gates_for_export(model, ckpt, source, request.data, request.gate_rate,
                                    max_flops=request.max_flops, confidence=request.confidence,
                                    eval_size=request.eval_size, batch_size=request.batch_size)
    return None


def _eager(model: torch.nn.Module, x: torch.Tensor, policy):
    with torch.no_grad():
        if isinstance(model, MultiExit):
            return run_early_exit(model, x, policy).as_output()
        if isinstance(model, (GatedResNet, DynamicResolutionNet, DSNet, *TOKEN_PRUNING)):
            return model(x, policy=policy)
        return model(x)


def _same_decision(ours: torch.Tensor, ref: torch.Tensor) -> bool:
    """Discrete decisions (exits, gates, widths) equal; continuous ones (a spatial
    transformer's `theta`) equal within float tolerance (engines round differently)."""
    ours = ours.to(ref.dtype)
    if ref.is_floating_point() and not torch.equal(ref, ref.round()):
        return torch.allclose(ours, ref, rtol=1e-4, atol=1e-5)
    return torch.equal(ours, ref)


def export_checkpoint(request: ExportRequest) -> dict[str, Any]:
    """Export the checkpoint's model and check the result.

    Returns:
        a summary: `manifest`, `format`, `kind`, `graphs` (count), `files`; with a
        budget, what was fitted (`budget_flops`, `policy`, `fitted_on`, `fitted_accuracy`,
        `fitted_mean_flops`, ...; also in the manifest's metadata as `fitted`), else the
        shipped `policy` (when there is one); `flops_per_sample` for one-graph (static)
        exports; with a check, `check_samples`, `check_max_logit_difference`,
        `check_decisions_equal`.

    Raises:
        CheckpointError: an unreadable checkpoint.
        ConfigError: a model that cannot be deployed, or a policy that does not fit it.
        ExportCheckError: the exported folder disagrees with eager inference on the check
            inputs (its manifest is moved aside).
    """
    if request.check_samples < 0:
        raise ConfigError(f"check_samples (--check-samples): expected 0 (no check) or more, got {request.check_samples}")
    model, ckpt, source, origin = load_model_source(request.checkpoint, request.model, request.pretrained,
                                                    request.pretrained_dir)
    preprocessing, _ = trained_preprocessing(ckpt, source)
    input_shape = tuple(ckpt["input_shape"])
    say = request.say or (lambda line: None)
    if request.gate_rate is not None or request.budget_flops is not None or request.budget_fraction is not None:
        say(f"fitting the rule of {ckpt['model_name']!r} on {request.data or 'its validation split'}")
    rule = _fitted_rule(model, ckpt, source, request)
    if rule is None:
        policy, fitted = _policy(model, request, input_shape), {}
    else:
        model, policy, fitted = rule.model, rule.policy, rule.report
    metadata = {**origin, "model_name": ckpt["model_name"], "model_args": ckpt.get("model_args", {}),
                "preprocessing": preprocessing.to_dict()}
    if fitted:
        metadata["fitted"] = fitted
    say(f"exporting {ckpt['model_name']!r} as {request.format} into {request.out_dir}")
    manifest_path = export_model(model, request.out_dir, format=request.format, input_shape=input_shape,
                                 policy=policy, metadata=metadata)
    manifest = read_manifest(request.out_dir)
    summary: dict[str, Any] = {
        "manifest": str(manifest_path), "format": manifest["format"], "kind": manifest["kind"],
        "model": ckpt.get("model_name", manifest["model"]), "graphs": len(manifest["graphs"]),
        "files": [entry["file"] for entry in manifest["graphs"].values()], **fitted,
    }
    if "policy" not in summary and manifest.get("policy") is not None:  # shipped as given (or the default)
        summary["policy"] = manifest["policy"]
    if manifest["kind"] == "static":  # one graph: every sample costs the same
        summary["flops_per_sample"] = float(next(iter(manifest["graphs"].values()))["flops"])
    if request.check_samples > 0:
        say(f"checking the export against eager inference on {request.check_samples} random inputs")
        deployed = DeployedModel.load(request.out_dir)
        x = torch.randn((request.check_samples, *input_shape), generator=torch.Generator().manual_seed(0))
        ours, ref = deployed(x), _eager(model, x, policy)
        summary["check_samples"] = request.check_samples
        summary["check_max_logit_difference"] = float((ours.logits - ref.logits).abs().max())
        summary["check_decisions_equal"] = all(
            _same_decision(ours.decisions[k], ref.decisions[k]) for k in ours.decisions if k in ref.decisions)
        _reject_failed_check(Path(request.out_dir), summary, float(ref.logits.abs().max()))
    return summary


def _reject_failed_check(folder: Path, summary: dict[str, Any], scale: float) -> None:
    """Raise `ExportCheckError` when the export disagrees with eager inference, after moving
    its manifest aside (`manifest.rejected.json`) so the folder no longer loads as valid."""
    difference, tolerance = summary["check_max_logit_difference"], 1e-3 * (1.0 + scale)
    if summary["check_decisions_equal"] and difference <= tolerance:
        return
    (folder / MANIFEST).replace(folder / REJECTED_MANIFEST)
    what = ("other decisions than eager inference" if not summary["check_decisions_equal"]
            else f"logits {difference:.3g} away from eager inference (tolerance {tolerance:.3g})")
    raise ExportCheckError(f"{folder}: the exported graphs give {what} on {summary['check_samples']} random "
                           "inputs; the manifest was moved to manifest.rejected.json (the graphs are kept for "
                           "inspection). Near-tied scores of untrained weights can flip a decision: "
                           "--check-samples 0 skips the check")


def export_folder_size(folder: str | Path) -> int:
    """Bytes of an export: its manifest and the graph files the manifest lists."""
    manifest = read_manifest(folder)
    files = [Path(folder) / "manifest.json"] + [Path(folder) / e["file"] for e in manifest["graphs"].values()]
    return sum(p.stat().st_size for p in files)
