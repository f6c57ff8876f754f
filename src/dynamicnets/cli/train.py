"""`dynamicnets train --config FILE|NAME [key=value ...]`."""
from __future__ import annotations

import dataclasses
import difflib

from ..config import from_mapping, load_yaml, merge, parse_overrides
from ..configs import find_config
from ..errors import ConfigError
from ..training import Trainer, TrainConfig


def build_train_config(path: str, overrides: list[str], resume: bool = False) -> TrainConfig:
    """YAML file (or shipped config name) + `key=value` overrides -> a validated TrainConfig.

    The file is checked on its own first, so a bad key or value is blamed on the file or
    on the command line, wherever it was written.

    Raises:
        ConfigError: naming the file, or the command-line override, at fault.
    """
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
