"""Check an export's `manifest.json` deeply enough that running it cannot fail on its data.

`read_manifest` checks the top level; this checks what each kind's runtime reads: every
graph entry (file, SHA-256, FLOPs), the input shape, the structure of the kind and the
exported policy, so that an edited or damaged manifest is one `ConfigError` naming the
file and the key at load time instead of a `KeyError` in the middle of a batch.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from ..errors import ConfigError
from ..gates.block_budget import CAPS as BLOCK_CAPS
from ..gates.thresholds import GatePolicy
from ..inference.policy import ExitPolicy
from ..inference.resolution_policy import ResolutionPolicy
from ..inference.width_policy import WidthPolicy

_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, got: Any) -> None:
        raise ConfigError(f"{self.source}: key {key!r}: expected {expected}, got {got!r}")

    def has(self, data: dict, key: str, where: str) -> Any:
        if not isinstance(data, dict) or key not in data:
            raise ConfigError(f"{self.source}: key '{where}.{key}' is missing")
        return data[key]

    def name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, "a graph name", value)
        return value

    def names(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list) or not value:
            self.fail(key, "a non-empty list of graph names", value)
        return [self.name(v, f"{key}[{i}]") for i, v in enumerate(value)]

    def numbers(self, value: Any, key: str, count: int | None = None) -> list[float]:
        if (not isinstance(value, list) or (count is not None and len(value) != count)
                or not all(_is_number(v) for v in value)):
            self.fail(key, "a list of numbers" + (f" of length {count}" if count is not None else ""), value)
        return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_manifest_contents(manifest: dict[str, Any], source: str) -> None:
    """Raise `ConfigError` (naming `source` and the key) unless `manifest` holds what its
    kind's runtime reads. `manifest` already passed `read_manifest`'s top-level checks."""
    c = _Checker(source)
    shape = manifest["input_shape"]
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                      for d in shape)):
        c.fail("input_shape", "a list of positive integers", shape)
    for name, entry in manifest["graphs"].items():
        where = f"graphs.{name}"
        if not isinstance(entry, dict):
            c.fail(where, "an object with 'file', 'sha256' and 'flops'", entry)
        file = c.has(entry, "file", where)
        if not isinstance(file, str) or not file or "/" in file or "\\" in file or file in (".", ".."):
            c.fail(f"{where}.file", "a file name inside the export folder", file)
        if not (isinstance(c.has(entry, "sha256", where), str) and _SHA256.fullmatch(entry["sha256"])):
            c.fail(f"{where}.sha256", "64 lowercase hex digits", entry["sha256"])
        if not (_is_number(c.has(entry, "flops", where)) and entry["flops"] >= 0):
            c.fail(f"{where}.flops", "a finite number >= 0", entry["flops"])
    structure = manifest["structure"]
    if not isinstance(structure, dict):
        c.fail("structure", "an object", structure)
    _STRUCTURES[manifest["kind"]](c, structure)
    _check_policy(c, manifest)


def _early_exit(c: _Checker, s: dict) -> None:
    stages = c.has(s, "stages", "structure")
    if not isinstance(stages, list) or not stages:
        c.fail("structure.stages", "a non-empty list of stages", stages)
    for k, stage in enumerate(stages):
        where = f"structure.stages[{k}]"
        c.name(c.has(stage, "segment", where), f"{where}.segment")
        c.name(c.has(stage, "head", where), f"{where}.head")
        if not isinstance(c.has(stage, "takes_input", where), bool):
            c.fail(f"{where}.takes_input", "true or false", stage["takes_input"])
        layout = c.has(stage, "state_in", where)
        if layout is None and k > 0:
            c.fail(f"{where}.state_in", "the state layout the stage reads", layout)
        if layout is not None and not (isinstance(layout, dict) and isinstance(layout.get("is_list"), bool)
                                       and isinstance(layout.get("count"), int) and layout["count"] >= 1):
            c.fail(f"{where}.state_in", "null or {'is_list': bool, 'count': int >= 1}", layout)
    c.numbers(c.has(s, "exit_costs", "structure"), "structure.exit_costs", len(stages))
    flags = c.has(s, "needs_input_after", "structure")
    if not (isinstance(flags, list) and len(flags) == len(stages) and all(isinstance(f, bool) for f in flags)):
        c.fail("structure.needs_input_after", f"a list of {len(stages)} booleans", flags)


def _gated(c: _Checker, s: dict) -> None:
    steps = c.has(s, "steps", "structure")
    if not isinstance(steps, list):
        c.fail("structure.steps", "a list of steps", steps)
    num_gates = c.has(s, "num_gates", "structure")
    if not (isinstance(num_gates, int) and not isinstance(num_gates, bool) and num_gates >= 0):
        c.fail("structure.num_gates", "an integer >= 0", num_gates)
    seen = []
    for i, step in enumerate(steps):
        where = f"structure.steps[{i}]"
        if isinstance(step, dict) and set(step) == {"run"}:
            c.name(step["run"], f"{where}.run")
        elif isinstance(step, dict) and set(step) == {"gate", "block", "index"}:
            c.name(step["gate"], f"{where}.gate")
            c.name(step["block"], f"{where}.block")
            if step["index"] != len(seen):
                c.fail(f"{where}.index", f"gate index {len(seen)}", step["index"])
            seen.append(step["index"])
        else:
            c.fail(where, "{'run': graph} or {'gate': graph, 'block': graph, 'index': int}", step)
    if len(seen) != num_gates:
        c.fail("structure.num_gates", f"{len(seen)} (the gated steps)", num_gates)
    c.name(c.has(s, "head", "structure"), "structure.head")


def _static(c: _Checker, s: dict) -> None:
    c.name(c.has(s, "graph", "structure"), "structure.graph")
    decisions = c.has(s, "decisions", "structure")
    if not (isinstance(decisions, list) and all(isinstance(d, str) for d in decisions)):
        c.fail("structure.decisions", "a list of decision names", decisions)


def _resolution(c: _Checker, s: dict) -> None:
    variants = c.names(c.has(s, "variants", "structure"), "structure.variants")
    c.name(c.has(s, "predictor", "structure"), "structure.predictor")
    c.numbers(c.has(s, "resolutions", "structure"), "structure.resolutions", len(variants))


def _width(c: _Checker, s: dict) -> None:
    variants = c.names(c.has(s, "variants", "structure"), "structure.variants")
    c.numbers(c.has(s, "widths", "structure"), "structure.widths", len(variants))
    gate = c.has(s, "gate", "structure")
    if gate is not None:
        c.name(gate, "structure.gate")
    if not _is_number(c.has(s, "default_width", "structure")):
        c.fail("structure.default_width", "a number", s["default_width"])


_STRUCTURES: dict[str, Callable[[_Checker, dict], None]] = {
    "early_exit": _early_exit, "gated": _gated, "static": _static, "resolution": _resolution, "width": _width,
}


def _check_policy(c: _Checker, manifest: dict[str, Any]) -> None:
    """Build the exported policy the runtime would build, so a malformed one fails here."""
    kind, policy, structure = manifest["kind"], manifest.get("policy"), manifest["structure"]
    where = f"{c.source}: key 'policy'"
    try:
        if kind == "early_exit":
            if not isinstance(policy, dict):
                c.fail("policy", "{'criterion': ..., 'thresholds': [...]}", policy)
            ExitPolicy(policy["criterion"], [float(t) for t in policy["thresholds"]],
                       policy.get("max_flops")).check(len(structure["stages"]))
        elif kind == "gated":
            GatePolicy.from_dict(policy, where).check(structure["num_gates"], where, caps=BLOCK_CAPS)
        elif kind == "resolution":
            ResolutionPolicy.from_dict(policy, where)
        elif kind == "width" and structure["gate"] is not None:
            if not isinstance(policy, dict):
                c.fail("policy", "an object (the DS-Net gate's rule)", policy)
            if policy.get("kind") == "width_cap":
                WidthPolicy.from_dict(policy, where)
    except ConfigError as error:
        if str(error).startswith(c.source):
            raise
        raise ConfigError(f"{where}: {error}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ConfigError(f"{where}: malformed for a {kind!r} export ({type(error).__name__}: {error})") from None
