from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from dynamicnets.config import from_mapping, load_yaml, merge, parse_overrides, to_plain
from dynamicnets.errors import ConfigError


@dataclass
class Example:
    epochs: int = 1
    lr: float = 0.1
    name: str = "x"
    optimizer: Literal["sgd", "adamw"] = "sgd"
    val_size: int | float = 0.1
    weights: list[float] | None = None
    args: dict = field(default_factory=dict)
    flag: bool = False


def test_valid_mapping_builds_typed_dataclass():
    cfg = from_mapping(Example, {"epochs": 3, "lr": 1, "val_size": 5000, "weights": [1, 2]})
    assert cfg.epochs == 3 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.val_size == 5000 and isinstance(cfg.val_size, int)
    assert cfg.weights == [1.0, 2.0]


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        from_mapping(Example, {"epocs": 3}, source="my.yaml")
    msg = str(e.value)
    assert "my.yaml" in msg and "'epocs'" in msg and "epochs" in msg and "optimizer" in msg


@pytest.mark.parametrize(
    "key,value,expected",
    [("epochs", "three", "integer"), ("epochs", 2.5, "integer"), ("lr", "fast", "number"),
     ("optimizer", "adam", "'sgd'"), ("flag", "yes", "true/false"), ("weights", 3, "list"),
     ("epochs", True, "integer")],
)
def test_wrong_type_names_key_and_expectation(key, value, expected):
    with pytest.raises(ConfigError) as e:
        from_mapping(Example, {key: value}, source="c.yaml")
    assert f"'{key}'" in str(e.value) and expected in str(e.value)


def test_overrides_parse_yaml_scalars_and_nesting():
    got = parse_overrides(["epochs=3", "lr=1e-3", "args.width=16", "flag=true", "name=abc"])
    assert got == {"epochs": 3, "lr": 1e-3, "args": {"width": 16}, "flag": True, "name": "abc"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_merge_is_recursive():
    assert merge({"a": 1, "b": {"c": 1, "d": 2}}, {"b": {"c": 5}}) == {"a": 1, "b": {"c": 5, "d": 2}}


def test_load_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_yaml(bad)
    seq = tmp_path / "seq.yaml"
    seq.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(seq)


def test_to_plain_round_trips():
    cfg = Example(weights=[1.0], args={"w": 2})
    assert from_mapping(Example, to_plain(cfg)) == cfg


def test_yaml_exponent_strings_are_numbers():
    assert from_mapping(Example, {"lr": "1e-3"}).lr == 1e-3


SHIPPED = sorted((Path(__file__).parents[1] / "src" / "dynamicnets" / "configs").glob("*.yaml"))
RECIPES = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))  # the repository's (zoo) recipes


def test_configs_are_shipped():
    assert len(SHIPPED) >= 5


@pytest.mark.parametrize("path", SHIPPED + RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_are_valid_train_configs_of_registered_models(path):
    from dynamicnets import create_model
    from dynamicnets.training import TrainConfig

    config = from_mapping(TrainConfig, load_yaml(path), source=str(path))
    create_model(config.model, device="meta", **config.model_args)
