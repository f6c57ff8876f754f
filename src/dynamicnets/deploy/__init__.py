"""Deploy dynamic models: export the static pieces, run them with compact dispatch.

- `deployment_plan(model, input_shape, policy)`: the model split at its decisions into
  static graphs (`DeploymentPlan`).
- `export_model(model, out_dir, format=...)`: the plan written as `torch.export` programs
  or ONNX models plus `manifest.json`.
- `DeployedModel.load(out_dir)`: the exported folder run by `torch.export` or onnxruntime
  with the library's compact dispatch (samples leave at exits, gated blocks run on their
  rows, samples grouped by width); `DeployedModel.from_plan(plan, "compiled")` runs each
  graph through `torch.compile` instead.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .backends import BACKENDS
from .export import FORMATS, export_plan
from .plan import DeploymentPlan, Graph, deployment_plan
from .runtime import DeployedModel, read_manifest


def export_model(model: nn.Module, out_dir: str | os.PathLike, *, format: str = "torch.export",
                 input_shape: tuple[int, ...] | None = None, policy=None,
                 metadata: dict | None = None) -> Path:
    """Split `model` at its decisions and export every piece into `out_dir`.

    Args:
        model: see `deployment_plan` for the supported kinds.
        out_dir: the export folder.
        format: `"torch.export"` or `"onnx"`.
        input_shape: per-sample input shape (default the model's).
        policy: the decision rule to ship (`ExitPolicy`, `GatePolicy`, `ResolutionPolicy`, `WidthPolicy`,
            a keep-ratio `TokenPolicy`).
        metadata: plain data kept in the manifest (preprocessing, provenance).

    Returns:
        the path of `manifest.json`.
    """
    return export_plan(deployment_plan(model, input_shape, policy), out_dir, format, metadata)


__all__ = ["BACKENDS", "DeployedModel", "DeploymentPlan", "FORMATS", "Graph", "deployment_plan", "export_model",
           "export_plan", "read_manifest"]
