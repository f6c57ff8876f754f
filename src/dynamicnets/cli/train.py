"""`dynamicnets train --config FILE|NAME|RUN_FOLDER [key=value ...]`."""
from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path

from ..config import from_mapping, load_yaml, merge, parse_overrides
from ..configs import find_config
from ..errors import ConfigError
from ..training import Trainer, TrainConfig


def _run_folder_config(folder: Path) -> tuple[Path, dict]:
    """A run folder's saved `config.yaml`, pointed at the folder where it lies now.

    The saved `name`/`out_dir` may name where the run was started (the folder can have
    been moved or copied since): both are taken from the folder's path as given, kept
    relative so a committed run's config stays portable (`zoo_runs/NAME` -> `zoo_runs`),
    and from its resolved path where the given one does not name the folder itself (`.`,
    `..`, a link). The saved `resume` and `overwrite` flags are the last command's: both
    are dropped, so this command alone decides whether the run continues or is replaced.
    """
    path = folder / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{folder}: a folder given as --config must be a run folder with a config.yaml "
                          f"(written by `dynamicnets train`); none found")
    values = load_yaml(path)
    where = Path(os.path.normpath(folder))
    if where.name in ("", "..") or where.is_symlink():
        where = folder.resolve()
    values["name"] = where.name
    values["out_dir"] = str(where.parent)
    values.pop("resume", None)
    values.pop("overwrite", None)
    return path, values


def build_train_config(path: str, overrides: list[str], resume: bool = False) -> TrainConfig:
    """YAML file, shipped config name or run folder + `key=value` overrides -> a TrainConfig.

    A run folder stands for the config it was last trained with (its `config.yaml`), so
    `--config runs/NAME --resume` continues a run with the settings it was started with,
    overrides included, without the original YAML at hand.

    The file is checked on its own first, so a bad key or value is blamed on the file or
    on the command line, wherever it was written.

    Raises:
        ConfigError: naming the file, or the command-line override, at fault.
    """
    folder = Path(path).expanduser()
    if folder.is_dir():
        path, from_file = _run_folder_config(folder)
    else:
        path = find_config(path)
        from_file = load_yaml(path)
    from_mapping(TrainConfig, from_file, source=str(path))
    given = parse_overrides(overrides, source="command line")
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in given:
        if key not in names:
            item = next(o for o in overrides if o.split("=", 1)[0].split(".")[0].strip() == key)
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"command line: unknown key {key!r} in override {item!r}{hint}; "
                              f"valid keys: {', '.join(names)}")
    values = merge(from_file, given)
    if resume:
        values["resume"] = True
    return from_mapping(TrainConfig, values, source="command-line override")


def run_train(path: str, overrides: list[str], resume: bool = False) -> int:
    config = build_train_config(path, overrides, resume)
    Trainer(config).fit()
    return 0
