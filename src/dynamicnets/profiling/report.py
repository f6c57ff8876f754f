"""Reports: JSON results with run metadata, Markdown/terminal tables, FLOPs as text.

Benchmark scripts write `benchmarks/results/<name>.json` with `write_json` and the
Markdown table quoted in BENCHMARKS.md with `markdown_table`. Files are written
atomically (temporary file in the same folder, then `os.replace`), so a crashed or
interrupted run never leaves a half-written result behind.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import numbers
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

import numpy as np
import torch

from ..errors import ConfigError
from .allocator import allocator_setting
from ..writing import atomic_write_with

_FLOPS_UNITS = ("", "K", "M", "G", "T", "P")
_FLOPS_PATTERN = re.compile(
    r"^\s*(?P<number>\+?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[kmgtp])?\s*(?:flops?)?\s*$",
    re.IGNORECASE,
)
_FLOPS_FORMS = (
    "a plain number (5e6, 30000000) or a number with a K/M/G/T/P suffix "
    "(500K, 30M, 1.2G), optionally followed by 'FLOPs'"
)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary file in the same folder + `os.replace`.

    Parent folders are created. Readers see either the old file or the complete new
    one; the file gets the mode the user's umask gives. `str` data is encoded as UTF-8.

    Args:
        path: the destination.
        data: the whole content.

    Returns:
        the path written.

    Raises:
        OutputError: naming the path, when it cannot be written (see
            `dynamicnets.writing.atomic_write_with`).
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return atomic_write_with(path, lambda handle: handle.write(payload))


def run_metadata() -> dict[str, Any]:
    """Facts about this run that a timing depends on.

    Returns:
        `{"date", "torch_version", "python_version", "platform", "cpu_model",
        "cpu_count", "threads", "allocator", "cuda_device"}`; `threads` is
        `torch.get_num_threads()` now, `allocator` whether freed memory stays in the
        process (`dynamicnets.profiling.allocator`), `cuda_device` is `None` without CUDA.
    """
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "allocator": allocator_setting(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(
    path: str | os.PathLike,
    records: list[dict] | dict,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write `{"meta": ..., "records": records}` to `path` atomically (indented JSON).

    Args:
        path: destination file; parent folders are created.
        records: the results, a list of row dicts or one dict. Tensors, numpy values,
            paths and dataclasses (e.g. `Measurement`) are converted to plain JSON.
        meta: extra metadata; merged over `run_metadata()`, so pass e.g.
            `{"threads": 2}` when the timings used another thread count than now.

    Returns:
        The path written.
    """
    if not isinstance(records, (list, dict)):
        raise ConfigError(
            f"write_json({str(path)!r}): records must be a list of dicts or a dict, "
            f"got {type(records).__name__}"
        )
    payload = {"meta": {**run_metadata(), **dict(meta or {})}, "records": records}
    try:
        text = json.dumps(payload, indent=2, default=_to_json)
    except TypeError as err:
        raise ConfigError(f"write_json({str(path)!r}): {err}") from err
    return atomic_write(path, text + "\n")


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    floatfmt: str | Mapping[str, str] = ".4g",
) -> str:
    """A GitHub-flavoured Markdown table of `rows`.

    Args:
        rows: one dict per table row; missing keys give empty cells.
        columns: the columns, in order; default: every key, in order of first appearance.
        floatfmt: format spec for floats (e.g. `".2f"`), or a column -> spec mapping
            (other columns use `".4g"`).

    Returns:
        The table, one line per row plus header and separator, without a trailing
        newline. Numeric columns are right-aligned.
    """
    columns, cells, numeric = _table_cells(rows, columns, floatfmt, escape=True)
    widths = [max([3, len(col), *(len(row[i]) for row in cells)]) for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        padded = (
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        )
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(
        ("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)
    ) + " |"
    header = [_escape(col) for col in columns]
    return "\n".join([line(header), rule, *(line(row) for row in cells)])


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    floatfmt: str | Mapping[str, str] = ".4g",
    file: TextIO | None = None,
) -> None:
    """Print `rows` as an aligned plain-text table (same arguments as `markdown_table`)."""
    columns, cells, numeric = _table_cells(rows, columns, floatfmt, escape=False)
    widths = [max([len(col), *(len(row[i]) for row in cells)]) for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        padded = (
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        )
        return "  ".join(padded).rstrip()

    out = sys.stdout if file is None else file
    print(line(list(columns)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print(line(row), file=out)


def format_flops(flops: float, digits: int = 3) -> str:
    """FLOPs as short text with `digits` significant figures: `81.3e6 -> "81.3M"`.

    Suffixes K, M, G, T, P are powers of 1000; `parse_flops` reads the result back.
    """
    value = float(flops)
    if not math.isfinite(value):
        raise ConfigError(f"format_flops: FLOPs must be a finite number, got {flops!r}")
    if value == 0:
        return "0"
    exponent = min(int(math.log10(abs(value)) // 3), len(_FLOPS_UNITS) - 1)
    exponent = max(exponent, 0)
    scaled = float(f"{value / 1000**exponent:.{digits}g}")
    if abs(scaled) >= 1000 and exponent < len(_FLOPS_UNITS) - 1:
        exponent += 1  # e.g. 999.96e6 rounds to 1000M: print as 1G
        scaled = float(f"{value / 1000**exponent:.{digits}g}")
    return f"{scaled:.{digits}g}{_FLOPS_UNITS[exponent]}"


def parse_flops(value: str | float | int, *, what: str = "FLOPs value") -> float:
    """Read FLOPs given as `"30M"`, `"1.2G"`, `"500k"`, `"5e6"`, `"30 MFLOPs"` or a number.

    Args:
        value: the text (suffixes are powers of 1000, case-insensitive) or a number.
        what: the key or option being read, named in the error (e.g. `"--budget"`).

    Returns:
        The FLOPs as a float (>= 0).

    Raises:
        ConfigError: `value` is not one of the accepted forms, or negative/not finite.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and number >= 0:
            return number
    elif isinstance(value, str):
        match = _FLOPS_PATTERN.match(value)
        if match:
            unit = (match["unit"] or "").upper()
            number = float(match["number"]) * 1000 ** _FLOPS_UNITS.index(unit)
            if math.isfinite(number):
                return number
    raise ConfigError(f"{what}: cannot read {value!r} as FLOPs; expected {_FLOPS_FORMS}")


def _table_cells(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None,
    floatfmt: str | Mapping[str, str],
    escape: bool,
) -> tuple[list[str], list[list[str]], list[bool]]:
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = [str(col) for col in columns]
    if not columns:
        raise ConfigError("table: no columns (give rows with keys, or columns=[...])")
    formats = [_column_format(floatfmt, col) for col in columns]
    cells = [
        [_format_cell(row.get(col), fmt, escape) for col, fmt in zip(columns, formats)]
        for row in rows
    ]
    numeric = [
        any(_is_number(row.get(col)) for row in rows)
        and all(row.get(col) is None or _is_number(row.get(col)) for row in rows)
        for col in columns
    ]
    return columns, cells, numeric


def _column_format(floatfmt: str | Mapping[str, str], column: str) -> str:
    fmt = floatfmt if isinstance(floatfmt, str) else floatfmt.get(column, ".4g")
    try:
        format(1.5, fmt)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"table: floatfmt {fmt!r} for column {column!r} is not a float format spec "
            f"(expected e.g. '.3f', '.4g'): {err}"
        ) from err
    return fmt


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype == torch.bool
    return isinstance(value, numbers.Number) and not isinstance(value, (bool, np.bool_))


def _format_cell(value: Any, fmt: str, escape: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return format(float(value), fmt)
    return _escape(str(value)) if escape else " ".join(str(value).split())


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _to_json(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.tolist()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot store a {type(value).__name__} in JSON: {value!r:.80}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and rest.strip():
                    return rest.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
