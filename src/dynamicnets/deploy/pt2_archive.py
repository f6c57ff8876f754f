"""Refuse `.pt2` archives that would unpickle objects when loaded.

`torch.export.load` reads a graph's weights and constants as raw tensors, except entries
marked `use_pickle`, custom/opaque objects and legacy `.pt` payloads, which it loads with
`torch.load(..., weights_only=False)` or `pickle.loads`: loading such a file runs whatever
code it carries. The SHA-256 in a folder's manifest cannot guard against that (the manifest
sits beside the file), and `dynamicnets` never writes such entries, so a folder's graphs are
checked here before torch reads them.
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


def _check_entry(path: Path, archive: zipfile.ZipFile, name: str, inner: str) -> None:
    def refuse(why: str) -> None:
        raise ConfigError(f"{path}: entry {name!r} {why}; refusing to load a graph that would run "
                          f"pickled code (dynamicnets never exports one)")

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
    if inner.startswith(layout.SAMPLE_INPUTS_DIR):
        payload = archive.read(name)
        if payload:
            try:
                torch.load(io.BytesIO(payload), weights_only=True)
            except Exception as error:  # noqa: BLE001 - any failure here means "not plain tensors"
                refuse(f"does not load with weights_only=True ({type(error).__name__})")
