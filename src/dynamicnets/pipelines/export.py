"""`dynamicnets export`: a trained checkpoint's dynamic model as deployable graphs.

Loads the checkpoint, builds the decision policy the user asks for (exit thresholds and a
compute cap, or gate thresholds), exports every static piece (`dynamicnets.deploy`) with
the input preprocessing recorded in the manifest, then loads the folder back with its
engine and checks it against eager compact inference on a few inputs, so a broken export
is found at export time, not in deployment.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.preprocessing import trained_preprocessing
from ..deploy import DeployedModel, export_model, read_manifest
from ..errors import ConfigError
from ..gates.thresholds import GatePolicy
from ..inference import ExitPolicy, run_early_exit
from ..inference.resolution_policy import ResolutionPolicy
from ..inference.width_policy import WidthPolicy
from ..models.spatial.dynamic_resolution import DynamicResolutionNet
from ..models.skipping.gated_resnet import GatedResNet
from ..models.width.dsnet import DSNet
from ..protocols import MultiExit
from .checkpoints import load_trained_model, run_checkpoint


@dataclass
class ExportRequest:
    """What `dynamicnets export` was asked.

    Attributes:
        checkpoint: a `best.pt` / `last.pt`, or a run folder.
        out_dir: the export folder.
        format: `"torch.export"` or `"onnx"`.
        criterion: early exits: the exit criterion.
        thresholds: early exits: `K - 1` exit thresholds; gated models: one per gate, or
            one for all. None: every sample to the last exit / the trained default.
        max_flops: a per-sample compute cap shipped with the policy.
        check_samples: random inputs the exported folder is checked on (0: no check).
    """

    checkpoint: str
    out_dir: str
    format: str = "torch.export"
    criterion: str = "maxprob"
    thresholds: list[float] | None = None
    max_flops: float | None = None
    check_samples: int = 8


def _policy(model: torch.nn.Module, request: ExportRequest):
    if isinstance(model, MultiExit):
        thresholds = request.thresholds
        if thresholds is None:
            thresholds = [float("inf")] * (model.num_exits - 1)
        return ExitPolicy(request.criterion, list(thresholds), request.max_flops)
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


def _eager(model: torch.nn.Module, x: torch.Tensor, policy):
    with torch.no_grad():
        if isinstance(model, MultiExit):
            return run_early_exit(model, x, policy).as_output()
        if isinstance(model, (GatedResNet, DynamicResolutionNet, DSNet)):
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
        a summary: `manifest`, `format`, `kind`, `graphs` (count), `files`, and with a
        check, `check_samples`, `check_max_logit_difference`, `check_decisions_equal`.

    Raises:
        CheckpointError: an unreadable checkpoint.
        ConfigError: a model that cannot be deployed, or a policy that does not fit it.
    """
    path = run_checkpoint(request.checkpoint)
    model, ckpt = load_trained_model(path)
    preprocessing, _ = trained_preprocessing(ckpt, str(path))
    policy = _policy(model, request)
    input_shape = tuple(ckpt["input_shape"])
    metadata = {"checkpoint": str(path), "model_args": ckpt.get("model_args", {}),
                "preprocessing": preprocessing.to_dict()}
    manifest_path = export_model(model, request.out_dir, format=request.format, input_shape=input_shape,
                                 policy=policy, metadata=metadata)
    manifest = read_manifest(request.out_dir)
    summary: dict[str, Any] = {
        "manifest": str(manifest_path), "format": manifest["format"], "kind": manifest["kind"],
        "model": manifest["model"], "graphs": len(manifest["graphs"]),
        "files": [entry["file"] for entry in manifest["graphs"].values()],
    }
    if request.check_samples > 0:
        deployed = DeployedModel.load(request.out_dir)
        x = torch.randn((request.check_samples, *input_shape), generator=torch.Generator().manual_seed(0))
        ours, ref = deployed(x), _eager(model, x, policy)
        summary["check_samples"] = request.check_samples
        summary["check_max_logit_difference"] = float((ours.logits - ref.logits).abs().max())
        summary["check_decisions_equal"] = all(
            _same_decision(ours.decisions[k], ref.decisions[k]) for k in ours.decisions if k in ref.decisions)
    return summary


def export_folder_size(folder: str | Path) -> int:
    """Bytes of every file in an export folder."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
