"""Typed configuration from plain mappings (YAML files, `key=value` overrides).

Every experiment config is a dataclass. `from_mapping` refuses unknown keys and wrong
types with one message that names the key, the source and what was expected.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` (int promotes to float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_mapping(cls: type[T], mapping: Mapping[str, Any], source: str = "config") -> T:
    """Build the dataclass `cls` from `mapping`, validating keys and types.

    Raises:
        ConfigError: naming `source`, the key, and the valid keys or expected type.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(mapping).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in mapping if k not in names]
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(names)}")
    values = {k: _coerce(v, hints[k], f"{source}: key {k!r}") for k, v in mapping.items()}
    return cls(**values)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error: `line L, column C: what` (no quoted source lines)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or type(err).__name__
    if isinstance(err, yaml.constructor.ConstructorError) and "tag" in str(problem):
        problem = f"{problem} (YAML tags are not allowed: only plain values, lists and mappings)"
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark and "tag" not in str(problem):
        problem = f"{problem} ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def _parse_scalar(raw: str, where: str) -> Any:
    """YAML value of an override, plus forms YAML 1.1 leaves as strings (`1e-3`).

    Raises:
        ConfigError: naming `where`, when `raw` is not valid YAML or carries a tag.
    """
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: value {raw!r} is not valid YAML ({_yaml_problem(e)})") from None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_overrides(items: list[str], source: str = "overrides") -> dict[str, Any]:
    """`["epochs=3", "model_args.width=16"]` -> nested dict, values parsed as YAML.

    A later override of the same key wins; a dotted key reaches into a mapping.

    Args:
        items: `key=value` strings.
        source: where they came from, named in errors.

    Returns:
        the nested dict.

    Raises:
        ConfigError: naming the override, for a missing `=`, an empty key part, a value
            that is not valid YAML, or a key used both as a value and as a mapping
            (`epochs=3 epochs.x=1`).
    """
    out: dict[str, Any] = {}
    set_by: dict[tuple[str, ...], str] = {}  # key path -> the override that set a plain value there
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{source}: expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = tuple(p.strip() for p in key.split("."))
        if not all(parts):
            raise ConfigError(f"{source}: {item!r} has an empty key; expected key=value or a.b=value")
        value = _parse_scalar(raw, f"{source}: {item!r}")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None or part not in node:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"{source}: {item!r} sets a key inside {'.'.join(parts[:depth + 1])!r}, but "
                    f"{set_by.get(parts[:depth + 1], 'an earlier override')!r} made it a plain value"
                )
            node = child
        node[parts[-1]] = value
        set_by[parts] = item
    return out


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `overrides` wins."""
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a file.

    Args:
        path: the file.

    Returns:
        the mapping (`{}` for an empty file).

    Raises:
        ConfigError: naming the file, when it is missing, a folder, unreadable, not
            UTF-8 text, not valid YAML (with line and column), or not a mapping.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, expected a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at line {line}); "
                          f"save the config as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML at {_yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def to_plain(obj: Any) -> Any:
    """Dataclass -> dict of plain Python values (safe inside a weights_only checkpoint)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
