"""Write a `DeploymentPlan` to a folder: one graph file per piece and `manifest.json`.

Formats:

- `"torch.export"`: each piece is a `torch.export` program (`<name>.pt2`), loaded back
  with `torch.export.load`;
- `"onnx"`: each piece is an ONNX model (`<name>.onnx`, opset of the installed exporter),
  run by onnxruntime (an optional dependency: `pip install dynamicnets[deploy]`).

Every graph has a dynamic batch dimension on each input and output. The manifest records
the structure, the decision policy, each graph's file, SHA-256, input/output counts and
per-sample FLOPs; it is written last, so a folder with a manifest is a complete export.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, InputKind

from ..errors import ConfigError
from ..layers.cond_conv import CondConv2d, RoutedCondConv2d
from ..layers.weightnet import WeightNetConv2d
from ..writing import atomic_write_with, ensure_dir
from .plan import DeploymentPlan, Graph

FORMATS = ("torch.export", "onnx")
MANIFEST = "manifest.json"
REJECTED_MANIFEST = "manifest.rejected.json"  # an export that failed its check, kept for inspection
MANIFEST_VERSION = 1
SUFFIX = {"torch.export": ".pt2", "onnx": ".onnx"}
MAX_BATCH = 1 << 16
_STATE = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


def _dynamic_batch(graph: Graph) -> tuple:
    """Dim 0 of every input is the batch (`forward(*tensors)` takes them as one varargs tuple)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    per_input = tuple({0: batch} for _ in graph.example)
    params = inspect.signature(graph.module.forward).parameters.values()
    return (per_input,) if any(p.kind is p.VAR_POSITIONAL for p in params) else per_input


def _without_unused_state(program: ExportedProgram) -> ExportedProgram:
    """`program` without the parameters, buffers and constants its graph never reads.

    A piece that calls a method of the whole model (an exit stage's `run_segment(k)`)
    owns the whole model, and `torch.export` lifts every tensor of it into the program:
    each of MSDNet's graphs carried all its weights (10x the folder's size) and the loaded
    module fetched every one of them on each call (about 3 ms at batch 1).
    """
    module = copy.deepcopy(program.graph_module)
    placeholders = {node.name: node for node in module.graph.find_nodes(op="placeholder")}
    keep, unused = [], set()
    for spec in program.graph_signature.input_specs:
        node = placeholders[spec.arg.name]
        if spec.kind in _STATE and not node.users:
            module.graph.erase_node(node)
            unused.add(spec.target)
        else:
            keep.append(spec)
    if not unused:
        return program
    module.recompile()
    return ExportedProgram(
        root=module, graph=module.graph,
        graph_signature=ExportGraphSignature(keep, program.graph_signature.output_specs),
        state_dict={k: v for k, v in program.state_dict.items() if k not in unused},
        range_constraints=program.range_constraints, module_call_graph=program.module_call_graph,
        example_inputs=program.example_inputs,
        constants={k: v for k, v in program.constants.items() if k not in unused}, verifiers=program.verifiers,
    )


def _torch_export_bytes(graph: Graph) -> bytes:
    program = torch.export.export(graph.module, graph.example, dynamic_shapes=_dynamic_batch(graph))
    program = _without_unused_state(program)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """Silence what the ONNX exporter says on every call and the user cannot act on: a warning
    per torchvision operator it skips (torchvision is not needed) and pytree deprecations."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        registration.setLevel(level)


def _onnx_bytes(graph: Graph, name: str) -> bytes:
    try:
        import onnx  # noqa: F401  (the exporter needs it; a clear error here is better than its own)
    except ImportError:
        raise ConfigError("format 'onnx' needs the onnx and onnxscript packages: "
                          "pip install 'dynamicnets[deploy]'") from None
    inputs = [f"input{i}" for i in range(len(graph.example))]
    outputs = [f"output{i}" for i in range(graph.outputs)]
    with contextlib.redirect_stdout(io.StringIO()), _quiet_onnx_exporter():  # it prints its progress
        program = torch.onnx.export(
            graph.module, graph.example, input_names=inputs, output_names=outputs,
            dynamic_shapes=_dynamic_batch(graph), dynamo=True, verbose=False,
        )
    if program is None:
        raise ConfigError(f"graph {name!r}: the ONNX exporter returned nothing")
    return program.model_proto.SerializeToString()


def graph_bytes(graph: Graph, name: str, fmt: str) -> bytes:
    """One graph serialised in `fmt` (`"torch.export"` or `"onnx"`)."""
    with torch.no_grad():
        return _torch_export_bytes(graph) if fmt == "torch.export" else _onnx_bytes(graph, name)


def _check_onnx_convertible(plan: DeploymentPlan) -> None:
    """Per-sample kernels (CondConv, DY-Conv, WeightNet) run as one convolution whose group
    count is the batch size; ONNX's `Conv` takes `group` as a fixed attribute, so with a
    dynamic batch they cannot be converted (torch.export can)."""
    per_sample = (CondConv2d, RoutedCondConv2d, WeightNetConv2d)
    for name, graph in plan.graphs.items():
        found = next((type(m).__name__ for m in graph.module.modules() if isinstance(m, per_sample)), None)
        if found is not None:
            raise ConfigError(f"--format onnx: graph {name!r} of {plan.model_name!r} holds a {found} (per-sample "
                              "kernels: one convolution grouped by the batch, which ONNX cannot take with a dynamic "
                              "batch); export it with --format torch.export")


def export_plan(plan: DeploymentPlan, out_dir: str | os.PathLike, fmt: str = "torch.export",
                metadata: dict[str, Any] | None = None) -> Path:
    """Export every graph of `plan` into `out_dir` and write its manifest.

    Args:
        plan: from `deployment_plan`.
        out_dir: the folder (created if needed; files of an earlier export are replaced).
        fmt: `"torch.export"` or `"onnx"`.
        metadata: plain data kept in the manifest (e.g. the input preprocessing and the
            checkpoint the model came from).

    Returns:
        the manifest's path.

    Raises:
        ConfigError: an unknown format, the ONNX packages missing, or per-sample kernels
            (CondConv, DY-Conv, WeightNet) for ONNX.
        OutputError: the folder cannot be written.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        _check_onnx_convertible(plan)
    folder = ensure_dir(out_dir, "export folder")
    manifest_path = folder / MANIFEST
    # Every graph is serialised and written under a staging name before the earlier export is
    # touched: a failed, full-disk or interrupted export leaves that one whole. Only the renames
    # and the manifest come after.
    payloads = {name: graph_bytes(graph, name, fmt) for name, graph in plan.graphs.items()}
    earlier = _listed_files(manifest_path) | _listed_files(folder / REJECTED_MANIFEST)
    files = {name: name + SUFFIX[fmt] for name in plan.graphs}
    staged = []
    try:
        for name, file in files.items():
            data = payloads[name]
            staged.append(atomic_write_with(folder / f".{file}.staged", lambda f, data=data: f.write(data)))
    except BaseException:
        for path in staged:
            path.unlink(missing_ok=True)
        raise
    if manifest_path.exists():  # an incomplete rewrite must not look complete
        manifest_path.unlink()
    graphs: dict[str, Any] = {}
    for (name, graph), path in zip(plan.graphs.items(), staged):
        path.replace(folder / files[name])
        graphs[name] = {"file": files[name], "sha256": hashlib.sha256(payloads[name]).hexdigest(),
                        "inputs": len(graph.example), "outputs": graph.outputs, "flops": graph.flops}
    manifest = {
        "format_version": MANIFEST_VERSION, "format": fmt, "kind": plan.kind, "model": plan.model_name,
        "input_shape": list(plan.input_shape), "graphs": graphs, "structure": plan.structure,
        "policy": plan.policy, "torch_version": torch.__version__, "metadata": dict(metadata or {}),
    }
    text = json.dumps(manifest, indent=2, allow_nan=True).encode()
    written = atomic_write_with(manifest_path, lambda f: f.write(text))
    for stale in earlier - set(files.values()):
        (folder / stale).unlink(missing_ok=True)
    (folder / REJECTED_MANIFEST).unlink(missing_ok=True)
    return written


def _listed_files(manifest_path: Path) -> set[str]:
    """The graph files an earlier manifest in the folder lists (none when it is unreadable);
    only those are removed when the new export does not reuse them."""
    try:
        graphs = json.loads(manifest_path.read_text()).get("graphs", {})
        files = {entry["file"] for entry in graphs.values()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return set()
    return {f for f in files if isinstance(f, str) and Path(f).name == f and f != MANIFEST}
