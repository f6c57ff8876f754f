"""Refuse `.pt2` archives whose loading or running could execute code they carry.

`torch.export.load` reads a graph's weights and constants as raw tensors, except entries
marked `use_pickle`, custom/opaque objects and legacy payloads, which it unpickles; it falls
back to an older, pickling reader for other layouts; it parses symbolic shapes with
`sympy.sympify` (Python `eval`) and resolves a node's target as any dotted name under
`torch`. The SHA-256 in a folder's manifest cannot guard against a tampered folder (the
manifest sits beside the file), and `dynamicnets` writes none of that, so a graph must be
exactly `torch.export.save`'s layout, with plain tensors, torch operators and arithmetic
shape expressions only; it is then read by the archive reader alone.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import torch
from torch.export.pt2_archive import constants as layout

from ..errors import ConfigError


# The only entries `torch.export.save` writes for one program (under one root folder); anything
# else (another layout, AOTInductor libraries, extra files) could make torch's reader run code.
_ALLOWED = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/\w+\.json|data/sample_inputs/\w+\.pt"
    r"|data/weights/\w+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/\w+_constants_config\.json|data/constants/tensor_\d+"
)


def check_pt2_archive(path: Path) -> None:
    """Raise `ConfigError` unless `path` is a `.pt2` zip in exactly the layout
    `torch.export.save` writes, whose payloads load without pickle.

    Checked: one root folder, no name twice, only the entries of that layout; every
    weights/constants config entry a plain tensor (`use_pickle` false); every sample-inputs
    file loads with `torch.load(weights_only=True)`.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ConfigError(f"{path}: not a .pt2 archive written by torch.export.save ({error})") from None
    with archive:
        names = archive.namelist()
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1 or any("/" not in name for name in names):
            raise ConfigError(f"{path}: not a .pt2 archive written by torch.export.save (expected one root folder, "
                              f"found {sorted(roots)[:5]})")
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"{path}: entries {twice[:3]} appear more than once; refusing an archive whose readers "
                              "could disagree on its contents")
        for name in names:
            inner = name.split("/", 1)[1]
            if not _ALLOWED.fullmatch(inner):
                raise ConfigError(f"{path}: entry {name!r} is not part of a program saved by torch.export.save; "
                                  "refusing to load it (dynamicnets exports hold nothing else)")
            _check_entry(path, archive, name, inner)


# What a graph may call: torch operators (`torch.ops.aten...`, higher-order ops) and Python's
# `operator` functions. The deserialiser resolves any other dotted name under `torch` too
# (`torch.serialization.os.system`), which would run when the program does.
_CALLABLE_PREFIXES = ("torch.ops.", "_operator.")
# Symbolic shapes are parsed with `sympy.sympify`, i.e. `eval`: only sympy's arithmetic on
# integers and quoted symbol names may appear.
_SYMBOL = re.compile(r"'[a-z]+\d+'")
_SHAPE_WORDS = {"Symbol", "Integer", "Rational", "Mul", "Add", "Pow", "Max", "Min", "Mod", "FloorDiv", "CeilDiv",
                "PythonMod", "CleanDiv", "IntTrueDiv", "FloorToInt", "CeilToInt", "TruncToInt", "positive", "integer",
                "nonnegative", "True", "False"}


def _is_shape_expression(text: str) -> bool:
    bare = _SYMBOL.sub("s0", text)
    if not re.fullmatch(r"[\w\s(),=+*/-]*", bare):
        return False
    return all(word.isdigit() or word in _SHAPE_WORDS or re.fullmatch(r"[a-z]+\d+", word)
               for word in re.findall(r"[A-Za-z_]\w*|\d+", bare))


def _strings(node, key: str | None = None):
    """Every `(key, string)` pair in a JSON tree (the key of the nearest enclosing object)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str) and key is not None:
        yield key, node


def _check_entry(path: Path, archive: zipfile.ZipFile, name: str, inner: str) -> None:
    def refuse(why: str) -> None:
        raise ConfigError(f"{path}: entry {name!r} {why}; refusing to load a graph that could run code "
                          f"it carries (dynamicnets never exports one)")

    in_weights, in_constants = inner.startswith(layout.WEIGHTS_DIR), inner.startswith(layout.CONSTANTS_DIR)
    if inner.endswith("_config.json") and (in_weights or in_constants):
        try:
            config = json.loads(archive.read(name)).get("config", {})
            entries = list(config.items())
        except (ValueError, AttributeError):
            refuse("is not a JSON object with a 'config' mapping")
        for key, meta in entries:
            if not isinstance(meta, dict):
                refuse(f"describes {key!r} with {type(meta).__name__}, not an object")
            if meta.get("use_pickle"):
                refuse(f"marks {key!r} as pickled (use_pickle)")
            if in_constants and not str(meta.get("path_name", "")).startswith(layout.TENSOR_CONSTANT_FILENAME_PREFIX):
                refuse(f"stores {key!r} as a custom or opaque object ({meta.get('path_name')!r})")
    if inner.startswith(layout.MODELS_DIR):
        try:
            program = json.loads(archive.read(name))
        except ValueError:
            refuse("is not JSON")
        for key, value in _strings(program):
            if key == "target" and not value.startswith(_CALLABLE_PREFIXES):
                refuse(f"calls {value!r}, not a torch operator")
            if key == "expr_str" and not _is_shape_expression(value):
                refuse(f"holds the shape expression {value[:60]!r}, which sympy would evaluate as Python")
    if inner.startswith(layout.SAMPLE_INPUTS_DIR):
        payload = archive.read(name)
        if payload:
            try:
                torch.load(io.BytesIO(payload), weights_only=True)
            except Exception as error:  # noqa: BLE001 - any failure here means "not plain tensors"
                refuse(f"does not load with weights_only=True ({type(error).__name__})")
