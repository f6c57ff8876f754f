"""`dynamicnets train --config FILE [key=value ...]`."""
from __future__ import annotations

from ..config import from_mapping, load_yaml, merge, parse_overrides
from ..training import Trainer, TrainConfig


def build_train_config(path: str, overrides: list[str], resume: bool = False) -> TrainConfig:
    """YAML file + `key=value` overrides -> a validated TrainConfig."""
    values = merge(load_yaml(path), parse_overrides(overrides))
    if resume:
        values["resume"] = True
    return from_mapping(TrainConfig, values, source=str(path))


def run_train(path: str, overrides: list[str], resume: bool = False) -> int:
    config = build_train_config(path, overrides, resume)
    Trainer(config).fit()
    return 0
