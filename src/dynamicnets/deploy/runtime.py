"""`DeployedModel`: run an exported folder (or a plan) with the same compact dispatch.

The runtime reads `manifest.json`, checks every graph file against its SHA-256, loads
each graph with one engine (`torch.export` programs or onnxruntime sessions) and drives
them with the library's compact execution:

- early exits: the exported stages and heads are handed to `run_early_exit` (the same
  executor eager inference uses), so samples that exit leave the batch and the decisions
  are those of the eager model;
- gated blocks: each gate graph scores the whole batch, each block graph runs on the rows
  whose logit is above the policy's threshold only (gathered, then written back);
- widths: DS-Net's gate picks a width per sample (argmax), the samples are grouped by
  width and each group runs that width's graph once; a slimmable network runs the
  requested width;
- resolution: the predictor graph scores each sample's resolutions, the `ResolutionPolicy`
  (bias, argmax, cap) picks one, the samples are grouped by resolution and each group runs
  that resolution's graph once (the resize is inside it);
- static (a spatial transformer classifier, a static or dynamic-parameter network, a
  token-pruning transformer under a keep-ratio policy): the one graph runs on the whole
  batch and returns the logits and the model's per-sample decisions (a spatial
  transformer's `theta`, a routed convolution's `routing`, the kept tokens).

Per-sample FLOPs are the sum of the exported graphs' per-sample costs over the graphs
each sample went through (for exits, the manifest's exit costs, as in eager execution).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..compact import assemble_rows, gather_rows, group_rows, rows_where
from ..errors import ConfigError
from ..gates.block_budget import CAPS as BLOCK_CAPS, BlockBudget
from ..gates.thresholds import GatePolicy
from ..inference.executor import run_early_exit
from ..inference.policy import ExitPolicy
from ..inference.resolution_policy import ResolutionPolicy
from ..inference.width_policy import WidthPolicy
from ..outputs import DynamicOutput
from .backends import Runner, compile_room, compiled_runner, file_runner, module_runner
from .export import FORMATS, MANIFEST, MANIFEST_VERSION
from .graphs import StateLayout
from .manifest_check import check_manifest_contents
from .plan import KINDS, DeploymentPlan

ENGINE_OF_FORMAT = {"torch.export": "torch.export", "onnx": "onnxruntime"}


def _require(condition: bool, source: str, what: str) -> None:
    if not condition:
        raise ConfigError(f"{source}: {what}")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """`folder/manifest.json`, checked for the keys the runtime needs.

    Raises:
        ConfigError: naming the file, when it is missing, not JSON or malformed.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{path}: no manifest; expected a folder written by `dynamicnets export`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the manifest as JSON ({err})") from None
    source = str(path)
    _require(isinstance(manifest, dict), source, "expected a JSON object")
    _require(manifest.get("format_version") == MANIFEST_VERSION, source,
             f"key 'format_version': expected {MANIFEST_VERSION}, got {manifest.get('format_version')!r}")
    _require(manifest.get("format") in FORMATS, source,
             f"key 'format': expected one of {FORMATS}, got {manifest.get('format')!r}")
    _require(manifest.get("kind") in KINDS, source, f"key 'kind': expected one of {KINDS}, got {manifest.get('kind')!r}")
    for key in ("graphs", "structure", "input_shape"):
        _require(key in manifest, source, f"key {key!r} is missing")
    _require(isinstance(manifest["graphs"], dict) and manifest["graphs"], source, "key 'graphs': expected graphs")
    check_manifest_contents(manifest, source)
    return manifest


def _check_graph_file(folder: Path, name: str, entry: dict) -> Path:
    path = folder / str(entry.get("file", ""))
    if not path.is_file():
        raise ConfigError(f"{path}: graph {name!r} named in the manifest is missing")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry.get("sha256"):
        raise ConfigError(
            f"{path}: SHA-256 {digest[:16]}... does not match the manifest's {str(entry.get('sha256'))[:16]}... "
            f"for graph {name!r} (a manifest from another export or model, or a changed file)"
        )
    return path


class _ExportedExits:
    """Exported stages and heads seen through the `MultiExit` protocol (for `run_early_exit`)."""

    training = False

    def __init__(self, structure: dict, runners: dict[str, Runner]) -> None:
        self.stages = structure["stages"]
        self.num_exits = len(self.stages)
        self.costs = [float(c) for c in structure["exit_costs"]]
        self.input_after = [bool(v) for v in structure["needs_input_after"]]
        self.runners = runners
        self.layouts = [None if s["state_in"] is None else StateLayout.from_dict(s["state_in"]) for s in self.stages]

    def run_segment(self, k: int, state, x: Tensor):
        stage = self.stages[k]
        tensors = () if self.layouts[k] is None else self.layouts[k].flatten(state)
        out = self.runners[stage["segment"]](*tensors, *((x,) if stage["takes_input"] else ()))
        if k + 1 < self.num_exits:  # the state as the next stage reads it (a list of one stays a list)
            return self.layouts[k + 1].rebuild(out)
        return out if len(out) > 1 else out[0]

    def exit_logits(self, k: int, state) -> Tensor:
        tensors = tuple(state) if isinstance(state, (list, tuple)) else (state,)
        return self.runners[self.stages[k]["head"]](*tensors)[0]

    def exit_costs(self, input_shape) -> list[float]:
        return list(self.costs)

    def needs_input_after(self, k: int) -> bool:
        return self.input_after[k]


class DeployedModel:
    """An exported dynamic model, run with compact dispatch by one engine.

    Build with `DeployedModel.load(folder)` (exported files) or
    `DeployedModel.from_plan(plan, backend="eager" | "compiled")` (in memory).

    Attributes:
        manifest: the manifest (plain data): kind, structure, policy, graphs, input shape.
        backend: the engine that runs the graphs.

    Shapes:
        `model(x (B, *input_shape)) -> DynamicOutput` with `logits (B, C)`, `flops (B,)` and
        the decisions: `exit_index (B,)` (early exits), `gates (B, G)` (gated blocks),
        `width_index (B,)` and `width (B,)` (widths), `resolution_index (B,)`,
        `resolution (B,)` and `resolution_capped (B,)` (resolutions), the exported decisions
        (static, e.g. `theta (B, 2, 3)`).
    """

    def __init__(self, manifest: dict[str, Any], runners: dict[str, Runner], backend: str) -> None:
        self.manifest, self.runners, self.backend = manifest, runners, backend
        self.kind = manifest["kind"]
        self.input_shape = tuple(manifest["input_shape"])
        self.flops = {name: float(entry["flops"]) for name, entry in manifest["graphs"].items()}
        self._room = compile_room(len(runners)) if backend == "compiled" else contextlib.nullcontext()
        missing = sorted(_graph_names(manifest) - set(runners))
        if missing:
            raise ConfigError(f"manifest of model {manifest.get('model')!r}: the structure names graphs "
                              f"{missing} that the manifest does not list")

    @classmethod
    def load(cls, folder: str | os.PathLike, backend: str | None = None) -> DeployedModel:
        """Load an exported folder.

        Args:
            folder: written by `export_model` / `dynamicnets export`.
            backend: `"torch.export"` for `.pt2` graphs, `"onnxruntime"` for `.onnx` ones;
                default the one that fits the folder's format.

        Raises:
            ConfigError: a missing or malformed manifest, a missing graph file, a file
                whose SHA-256 differs from the manifest's, an engine that does not fit.
        """
        manifest = read_manifest(folder)
        engine = ENGINE_OF_FORMAT[manifest["format"]]
        if backend is not None and backend != engine:
            raise ConfigError(f"backend {backend!r} cannot run a {manifest['format']!r} export; use {engine!r}")
        root = Path(folder)
        runners = {name: file_runner(_check_graph_file(root, name, entry), engine)
                   for name, entry in manifest["graphs"].items()}
        return cls(manifest, runners, engine)

    @classmethod
    def from_plan(cls, plan: DeploymentPlan, backend: str = "eager") -> DeployedModel:
        """Run a plan's own modules (`"eager"`) or each compiled on its own (`"compiled"`)."""
        if backend not in ("eager", "compiled"):
            raise ConfigError(f"backend: a plan runs 'eager' or 'compiled', got {backend!r}")
        make = compiled_runner if backend == "compiled" else module_runner
        manifest = {"kind": plan.kind, "model": plan.model_name, "input_shape": list(plan.input_shape),
                    "structure": plan.structure, "policy": plan.policy,
                    "graphs": {n: {"flops": g.flops} for n, g in plan.graphs.items()}}
        return cls(manifest, {n: make(g.module) for n, g in plan.graphs.items()}, backend)

    def default_policy(self):
        """The policy exported with the model, as plain data: exit thresholds, gate thresholds,
        a width or resolution rule, a token model's keep ratio; None for a static network."""
        return self.manifest.get("policy")

    def __call__(self, x: Tensor, *,
                 policy: ExitPolicy | GatePolicy | ResolutionPolicy | WidthPolicy | None = None,
                 width: float | None = None) -> DynamicOutput:
        """Run a batch.

        Args:
            x: `(B, *input_shape)`.
            policy: instead of the exported policy: an `ExitPolicy` (early exits), a
                `GatePolicy` (gated blocks; its `max_flops` / `max_blocks` caps apply), a
                `ResolutionPolicy` (resolutions) or a `WidthPolicy` (DS-Net: gate bias, caps).
                A static folder (one graph, e.g. a keep-ratio token model) refuses any.
            width: a slimmable network: the width to run (default the exported one).
        """
        if x.shape[0] == 0:
            raise ConfigError("x: an empty batch; the exported graphs take batches of 1 or more")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(f"model {self.manifest.get('model')!r} was exported for inputs "
                              f"{self.input_shape}, got {tuple(x.shape[1:])}")
        with torch.no_grad(), self._room:
            if self.kind == "early_exit":
                return self._exits(x, policy)
            if self.kind == "gated":
                return self._gated(x, policy)
            if self.kind == "static":
                if policy is not None:
                    fixed = self.manifest.get("policy")
                    raise ConfigError(f"policy: model {self.manifest.get('model')!r} is one graph and takes no "
                                      f"policy" + ("" if fixed is None else f"; its rule was fixed at export "
                                                   f"({fixed}): export again with another"))
                return self._static(x)
            if self.kind == "resolution":
                return self._resolution(x, policy)
            return self._width(x, width, policy)

    def _exits(self, x: Tensor, policy: ExitPolicy | None) -> DynamicOutput:
        if policy is None:
            data = self.manifest["policy"]
            policy = ExitPolicy(data["criterion"], [float(t) for t in data["thresholds"]], data.get("max_flops"))
        exits = _ExportedExits(self.manifest["structure"], self.runners)
        return run_early_exit(exits, x, policy, costs=exits.costs).as_output()

    def _gated(self, x: Tensor, policy: GatePolicy | None) -> DynamicOutput:
        structure = self.manifest["structure"]
        if policy is None:
            policy = GatePolicy.from_dict(self.manifest["policy"], "manifest policy")
        num_gates = structure["num_gates"]
        cuts = policy.check(num_gates, "policy", caps=BLOCK_CAPS).thresholds
        steps = structure["steps"]
        base = sum(self.flops[s.get("run", s.get("gate"))] for s in steps) + self.flops[structure["head"]]
        budget = BlockBudget.from_policy(policy, [self.flops[s["block"]] for s in steps if "block" in s], base,
                                         owner=f"model {self.manifest.get('model')!r}")
        batch = x.shape[0]
        flops = torch.zeros(batch, dtype=torch.float64, device=x.device)
        gates, h = [], x
        for step in structure["steps"]:
            if "run" in step:
                (h,) = self.runners[step["run"]](h)
                flops += self.flops[step["run"]]
                continue
            (logit,) = self.runners[step["gate"]](h)
            flops += self.flops[step["gate"]]
            on = logit.reshape(-1) > cuts[step["index"]]
            if budget is not None:
                on = budget.admit(step["index"], on)
            rows = rows_where(on)
            if rows.numel() == batch:
                (h,) = self.runners[step["block"]](h)
            elif rows.numel():
                (done,) = self.runners[step["block"]](h[rows])
                # in place into an activation of ours (no copy of the batch per block), never into the
                # caller's input or a view of it (a gated block reading x, a flatten of x)
                shared = h.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
                h = h.index_put((rows,), done) if shared else h.index_put_((rows,), done)
            flops += on.to(torch.float64) * self.flops[step["block"]]
            gates.append(on)
        (logits,) = self.runners[structure["head"]](h)
        flops += self.flops[structure["head"]]
        decided = torch.stack(gates, dim=1).to(logits.dtype) if gates else logits.new_zeros((batch, 0))
        decisions = {"gates": decided}
        if budget is not None:
            decisions["forced_off"] = budget.forced_off(batch, logits)
        return DynamicOutput(logits=logits, flops=flops, decisions=decisions)

    def _resolution(self, x: Tensor, policy: ResolutionPolicy | None) -> DynamicOutput:
        structure = self.manifest["structure"]
        if policy is None:
            policy = ResolutionPolicy.from_dict(self.manifest["policy"], "manifest policy")
        if not isinstance(policy, ResolutionPolicy):
            raise ConfigError(f"policy: model {self.manifest.get('model')!r} picks resolutions, expected a "
                              f"ResolutionPolicy, got {type(policy).__name__}")
        variants, predictor = structure["variants"], structure["predictor"]
        (scores,) = self.runners[predictor](x)
        costs = [self.flops[predictor] + self.flops[v] for v in variants]
        choice, capped = policy.choose(scores, costs, f"model {self.manifest.get('model')!r}")
        pieces = [(rows, self.runners[variants[i]](gather_rows(x, rows))[0])
                  for i, rows in group_rows(choice, len(variants))]
        flops = torch.tensor(costs, dtype=torch.float64, device=x.device)[choice]
        resolution = torch.tensor(structure["resolutions"], device=x.device)[choice]
        return DynamicOutput(logits=assemble_rows(pieces, x.shape[0]), flops=flops, decisions={
            "resolution_index": choice, "resolution": resolution, "resolution_capped": capped})

    def _static(self, x: Tensor) -> DynamicOutput:
        structure = self.manifest["structure"]
        logits, *decided = self.runners[structure["graph"]](x)
        flops = torch.full((x.shape[0],), self.flops[structure["graph"]], dtype=torch.float64, device=x.device)
        return DynamicOutput(logits=logits, flops=flops, decisions=dict(zip(structure["decisions"], decided)))

    def _width(self, x: Tensor, width: float | None, policy: WidthPolicy | None) -> DynamicOutput:
        structure = self.manifest["structure"]
        widths = [float(w) for w in structure["widths"]]
        variants = structure["variants"]
        batch = x.shape[0]
        decisions = {}
        if policy is not None and (structure["gate"] is None or width is not None):
            raise ConfigError(f"policy: model {self.manifest.get('model')!r} runs the width asked for here; a "
                              f"WidthPolicy applies to a DS-Net's gate, without width=")
        if structure["gate"] is not None and width is None:
            if policy is None and self.manifest["policy"].get("kind") == "width_cap":
                policy = WidthPolicy.from_dict(self.manifest["policy"], "manifest policy")
            if policy is not None and not isinstance(policy, WidthPolicy):
                raise ConfigError(f"policy: model {self.manifest.get('model')!r} picks widths, expected a "
                                  f"WidthPolicy, got {type(policy).__name__}")
            (scores,) = self.runners[structure["gate"]](x)
            costs = self.flops[structure["gate"]] + torch.tensor([self.flops[v] for v in variants],
                                                                 dtype=torch.float64, device=x.device)
            if policy is None:
                choice = scores.argmax(dim=-1)
            else:
                owner = f"model {self.manifest.get('model')!r}"
                wanted = policy.biased(scores, owner).argmax(dim=-1)
                choice = wanted.clamp(max=policy.widest_allowed(widths, costs.tolist(), owner))
                decisions["width_capped"] = choice != wanted
            pieces = [(rows, self.runners[variants[i]](x[rows])[0]) for i, rows in group_rows(choice, len(widths))]
            logits = assemble_rows(pieces, batch)
            flops = costs[choice]
        else:
            wanted = float(structure["default_width"] if width is None else width)
            matches = [i for i, w in enumerate(widths) if math.isclose(w, wanted)]
            if not matches:
                raise ConfigError(f"width: the export holds widths {widths}, got {wanted}")
            i = matches[0]
            (logits,) = self.runners[variants[i]](x)
            choice = torch.full((batch,), i, dtype=torch.int64, device=x.device)
            flops = torch.full((batch,), self.flops[variants[i]], dtype=torch.float64, device=x.device)
        width_values = torch.tensor(widths, device=x.device)[choice]
        return DynamicOutput(logits=logits, flops=flops,
                             decisions={"width_index": choice, "width": width_values, **decisions})


def _graph_names(manifest: dict[str, Any]) -> set[str]:
    """Every graph name the structure refers to."""
    s, kind = manifest["structure"], manifest["kind"]
    if kind == "early_exit":
        return {n for stage in s["stages"] for n in (stage["segment"], stage["head"])}
    if kind == "gated":
        return {n for step in s["steps"] for key, n in step.items() if key != "index"} | {s["head"]}
    if kind == "static":
        return {s["graph"]}
    if kind == "resolution":
        return set(s["variants"]) | {s["predictor"]}
    return set(s["variants"]) | ({s["gate"]} if s.get("gate") else set())
