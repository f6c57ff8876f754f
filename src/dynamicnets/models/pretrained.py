"""Shipped pretrained weights: the table of what is shipped, and verified loading.

The package folder `dynamicnets/weights/` holds one file per shipped weight,
`<model>_<tag>.pt` (the model's `state_dict` only, float32, read with
`torch.load(..., weights_only=True)`), and `registry.json`, the table describing them:
file, sha256, validation accuracy, parameters, FLOPs, CPU hours, training config, the data
and split, and the preprocessing the weights expect. `create_model(name, pretrained=TAG)`
reads the table, checks the file's sha256 and loads it:

```python
import torch
import dynamicnets as dn
from dynamicnets.models.pretrained import pretrained_weights

model = dn.create_model("resnet20", pretrained="cifar10").eval()
weights = pretrained_weights("resnet20", "cifar10")
mean = torch.tensor(weights.preprocessing.mean).view(3, 1, 1)
std = torch.tensor(weights.preprocessing.std).view(3, 1, 1)
pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)       # uint8 images
logits = model((pixels * weights.preprocessing.scale - mean) / std).logits  # (4, 10)
```

Every function takes `root`, the folder holding `registry.json` and the weight files
(default: the package's own), so a copy elsewhere can be read the same way.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.preprocessing import Preprocessing
from ..errors import CheckpointError, ConfigError

REGISTRY_FILE = "registry.json"
"""The table of shipped weights, in the weights folder."""

FORMAT = "dynamicnets.weights/1"
"""The `format` field of `registry.json`."""

_CHUNK = 1 << 20


def default_weights_dir() -> Path:
    """The package's folder of shipped weights (`dynamicnets/weights/`)."""
    return Path(str(resources.files("dynamicnets.weights")))


@dataclass(frozen=True)
class PretrainedWeights:
    """One shipped weight: a row of `registry.json`.

    Attributes:
        model: the registered model name, e.g. `resnet20`.
        tag: what the weights were trained on, e.g. `cifar10` (`create_model`'s
            `pretrained=` value).
        file: the weight file's name in the weights folder, e.g. `resnet20_cifar10.pt`.
        sha256: hex digest of that file.
        model_args: the constructor keyword arguments the weights fit (with
            `num_classes` and `in_chans`).
        input_shape: one input's shape, e.g. `(3, 32, 32)`.
        preprocessing: how stored samples become the inputs the weights expect, as
            `Preprocessing.to_dict()` gives it (see `preprocessing`).
        data: the data set and split: `name` (a `load_data` name, e.g. `cifar10`),
            `val_size`, `seed` (the seeded validation split held out of the training
            files), `train_samples`, `description`.
        val_accuracy: top-1 accuracy on that validation split, as a fraction.
        params: number of parameters.
        flops: FLOPs of one sample through the whole network (2 per multiply-add).
        cpu_hours: training cost in CPU-core hours.
        config: the name of the training config.
        default: `pretrained=True` picks this tag when the model has several.
        details: everything else the model card shows (recipe, training command,
            provenance, and for dynamic models their measured trade-off).
    """

    model: str
    tag: str
    file: str
    sha256: str
    model_args: dict[str, Any]
    input_shape: tuple[int, ...]
    preprocessing_dict: dict[str, Any]
    data: dict[str, Any]
    val_accuracy: float
    params: int
    flops: float
    cpu_hours: float | None
    config: str
    default: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocessing(self) -> Preprocessing:
        """How to prepare inputs for these weights: `x = (raw * scale - mean) / std`."""
        return Preprocessing.from_dict(self.preprocessing_dict, f"pretrained weights {self.model}/{self.tag}")

    @property
    def num_classes(self) -> int:
        """Classes of the shipped classifier."""
        return int(self.model_args["num_classes"])

    def path(self, root: str | Path | None = None) -> Path:
        """The weight file in `root` (default: the package's weights folder)."""
        return Path(root if root is not None else default_weights_dir()) / self.file

    def checkpoint_fields(self) -> dict[str, Any]:
        """What evaluation reads from a training checkpoint, for these weights: `model_name`,
        `num_classes`, `input_shape`, `preprocessing`, `data` (the data set's name) and
        `config` (`val_size`, `seed`: the split the weights were validated on)."""
        return {"model_name": self.model, "model_args": dict(self.model_args), "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "preprocessing": dict(self.preprocessing_dict),
                "data": self.data["name"], "config": {"val_size": self.data["val_size"], "seed": self.data["seed"]}}

    def to_dict(self) -> dict[str, Any]:
        """The `registry.json` row (plain JSON values)."""
        return {"model": self.model, "tag": self.tag, "default": self.default, "file": self.file,
                "sha256": self.sha256, "model_args": dict(self.model_args), "input_shape": list(self.input_shape),
                "preprocessing": dict(self.preprocessing_dict), "data": dict(self.data),
                "val_accuracy": self.val_accuracy, "params": self.params, "flops": self.flops,
                "cpu_hours": self.cpu_hours, "config": self.config, **self.details}

    @classmethod
    def from_dict(cls, row: Any, source: str = REGISTRY_FILE) -> "PretrainedWeights":
        """Read a `registry.json` row back.

        Raises:
            CheckpointError: naming `source`, when a field is missing or of the wrong type.
        """
        if not isinstance(row, dict):
            raise CheckpointError(f"{source}: a row of 'weights' must be a mapping, got {type(row).__name__}")
        where = f"{source}: row {row.get('model', '?')}/{row.get('tag', '?')}"
        for key, kind in _ROW_TYPES.items():
            if key not in row:
                raise CheckpointError(f"{where}: missing field {key!r}")
            if not isinstance(row[key], kind) or isinstance(row[key], bool) and kind is not bool:
                raise CheckpointError(f"{where}: field {key!r} should be {_names(kind)}, got {row[key]!r:.60}")
        for key in ("name", "val_size", "seed"):
            if key not in row["data"]:
                raise CheckpointError(f"{where}: field 'data' lacks {key!r}")
        if "num_classes" not in row["model_args"]:
            raise CheckpointError(f"{where}: field 'model_args' lacks 'num_classes'")
        known = set(_ROW_TYPES) | {"default"}
        return cls(model=row["model"], tag=row["tag"], file=row["file"], sha256=row["sha256"].lower(),
                   model_args=dict(row["model_args"]), input_shape=tuple(int(s) for s in row["input_shape"]),
                   preprocessing_dict=dict(row["preprocessing"]), data=dict(row["data"]),
                   val_accuracy=float(row["val_accuracy"]), params=int(row["params"]), flops=float(row["flops"]),
                   cpu_hours=None if row["cpu_hours"] is None else float(row["cpu_hours"]),
                   config=row["config"], default=bool(row.get("default", False)),
                   details={k: v for k, v in row.items() if k not in known})


_ROW_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": str, "tag": str, "file": str, "sha256": str, "model_args": dict, "input_shape": list,
    "preprocessing": dict, "data": dict, "val_accuracy": (int, float), "params": int, "flops": (int, float),
    "cpu_hours": (int, float, type(None)), "config": str,
}


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def read_registry(root: str | Path | None = None) -> list[PretrainedWeights]:
    """Every row of `root/registry.json`, sorted by model and tag.

    Args:
        root: the weights folder (default: the package's own).

    Returns:
        the rows; an empty list when `root` has no `registry.json` yet.

    Raises:
        CheckpointError: naming the file, when it is not valid JSON of the expected format.
    """
    path = Path(root if root is not None else default_weights_dir()) / REGISTRY_FILE
    if not path.is_file():
        return []
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the table of shipped weights: {err}") from err
    if not isinstance(table, dict) or table.get("format") != FORMAT or not isinstance(table.get("weights"), list):
        raise CheckpointError(f"{path}: expected {{'format': {FORMAT!r}, 'weights': [...]}}")
    rows = [PretrainedWeights.from_dict(row, str(path)) for row in table["weights"]]
    return sorted(rows, key=lambda w: (w.model, w.tag))


def list_pretrained(pattern: str = "*", root: str | Path | None = None) -> list[PretrainedWeights]:
    """The shipped weights of the models whose names match a shell-style `pattern`.

    Args:
        pattern: e.g. `"resnet*"`.
        root: the weights folder (default: the package's own).

    Returns:
        the matching rows, sorted by model and tag.
    """
    return [w for w in read_registry(root) if fnmatch.fnmatch(w.model, pattern)]


def pretrained_weights(name: str, tag: str | bool = True, root: str | Path | None = None) -> PretrainedWeights:
    """The shipped weights of model `name` tagged `tag`.

    Args:
        name: a model name, e.g. `resnet20`.
        tag: a tag, e.g. `cifar10`; `True`: the model's only tag, or its default one.
        root: the weights folder (default: the package's own).

    Returns:
        the registry row.

    Raises:
        ConfigError: `root` is given but holds no `registry.json` (or does not exist);
            `tag` is neither a string nor `True`; no weights are shipped for
            `name` (the message lists the models that have some); no weights carry `tag`
            (the message lists the model's tags); or `tag=True` for a model with several
            tags and no default.
    """
    if not (tag is True or isinstance(tag, str)):
        raise ConfigError(f"pretrained: expected False, True or a tag such as 'cifar10', got {tag!r}")
    if root is not None and not (Path(root) / REGISTRY_FILE).is_file():
        problem = f"has no {REGISTRY_FILE}" if Path(root).is_dir() else "does not exist"
        raise ConfigError(f"pretrained_dir {str(root)!r} {problem}; expected a folder holding {REGISTRY_FILE} "
                          "and the weight files it lists")
    table = read_registry(root)
    rows = [w for w in table if w.model == name]
    if not rows:
        shipped = ", ".join(f"{w.model} ({w.tag})" for w in table) or "none"
        raise ConfigError(f"model {name!r}: no pretrained weights are shipped for it; models with weights: {shipped}")
    tags = ", ".join(w.tag for w in rows)
    if tag is True:
        defaults = [w for w in rows if w.default]
        if len(rows) == 1 or len(defaults) == 1:
            return rows[0] if len(rows) == 1 else defaults[0]
        raise ConfigError(f"model {name!r}: pretrained=True is ambiguous, it has weights tagged {tags}; "
                          f"pass one of them as pretrained='TAG'")
    for row in rows:
        if row.tag == tag:
            return row
    raise ConfigError(f"model {name!r}: no pretrained weights tagged {tag!r}; available tags: {tags}")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 digest of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_pretrained_state(weights: PretrainedWeights, root: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The state_dict in `weights`' file, after checking the file's sha256.

    Args:
        weights: a registry row.
        root: the weights folder (default: the package's own).

    Returns:
        name -> tensor (read with `weights_only=True`, on the CPU).

    Raises:
        CheckpointError: naming the file and the expected sha256, when the file is
            missing, its digest differs (corrupt, truncated or replaced), or it does not
            hold a mapping of names to tensors.
    """
    from ..training.checkpoint import load_checkpoint  # training imports the models

    path = weights.path(root)
    label = f"pretrained weights {weights.model}/{weights.tag}"
    if not path.is_file():
        raise CheckpointError(f"{path}: {label}: file not found (expected sha256 {weights.sha256}); "
                              "reinstall dynamicnets or export the weights again")
    actual = sha256_file(path)
    if actual != weights.sha256:
        raise CheckpointError(f"{path}: {label}: sha256 {actual} does not match the expected {weights.sha256} "
                              "(the file is corrupt or was replaced); reinstall dynamicnets or export the weights "
                              "again")
    state = load_checkpoint(path)
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: {label}: entry {bad!r} is not a tensor; expected a state_dict")
    return state


def load_pretrained(model: nn.Module, weights: PretrainedWeights, root: str | Path | None = None) -> nn.Module:
    """Load `weights` into `model` (built by `create_model(weights.model, ...)`), in place.

    Args:
        model: the model; its parameters keep their device and dtype.
        weights: a registry row.
        root: the weights folder (default: the package's own).

    Returns:
        `model`.

    Raises:
        CheckpointError: the file is missing or its sha256 differs (see
            `load_pretrained_state`).
        ConfigError: the model was built with arguments the weights do not fit (the first
            differing key and both shapes are named, with the arguments the weights fit).
    """
    state = load_pretrained_state(weights, root)
    expected = model.state_dict()
    fits = ", ".join(f"{k}={v!r}" for k, v in weights.model_args.items())
    for key in sorted(set(expected) | set(state)):
        if key not in state or key not in expected:
            where = "the weights" if key not in state else "the model"
            raise ConfigError(f"pretrained weights {weights.model}/{weights.tag}: key {key!r} is missing from "
                              f"{where}; the weights fit {weights.model}({fits})")
        if tuple(state[key].shape) != tuple(expected[key].shape):
            raise ConfigError(f"pretrained weights {weights.model}/{weights.tag}: key {key!r} has shape "
                              f"{tuple(state[key].shape)} in the weights but {tuple(expected[key].shape)} in the "
                              f"model; the weights fit {weights.model}({fits}) (to change the classes, load them "
                              "and call reset_classifier)")
    model.load_state_dict(state)
    return model
