"""The preprocessing a model was trained with, kept with the model and applied to any data.

A model learns on inputs `x = (raw * scale - mean) / std`, where `raw` is what the data
source stores (uint8 pixels for MNIST, CIFAR and image folders; float32 values for digits
and MNIST-1D). Scoring it on the same images read through another source (CIFAR pickles
vs. PNG files) must give the same inputs, so the trainer records a `Preprocessing` in
every checkpoint and evaluation applies it to whatever source it reads:

```python
from dynamicnets.data import load_data
from dynamicnets.data.preprocessing import conform, preprocessing_for_spec

trained = preprocessing_for_spec("cifar10", (3, 32, 32))   # what a CIFAR model saw
folder = load_data("imagefolder:path/to/pngs", augment=False)
val, note = conform(folder.val, trained, source="imagefolder:path/to/pngs")
# val now yields CIFAR-normalised inputs; `note` says what was converted
```

A source whose samples cannot be brought to the trained form (other stored type, other
input size) is a `DataError`, never a quietly different input.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from ..errors import CheckpointError, DataError
from .in_memory import InMemoryDataset

__all__ = ["Preprocessing", "conform", "preprocessing_for_spec", "preprocessing_of", "trained_preprocessing"]

STORAGES = ("uint8", "float32")
"""What a data source stores: `uint8` pixels in 0..255, or `float32` values."""

# Per-channel statistics of the training sets, for pixels scaled to [0, 1].
MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

# What each data set of `load_data` stores and how it turns it into model inputs:
# (storage, scale, mean, std).
SPEC_PREPROCESSING: dict[str, tuple[str, float, tuple[float, ...] | None, tuple[float, ...] | None]] = {
    "digits": ("float32", 1.0, None, None),
    "mnist1d": ("float32", 1.0, None, None),
    "mnist": ("uint8", 1 / 255, *MNIST_STATS),
    "cifar10": ("uint8", 1 / 255, *CIFAR10_STATS),
    "cifar100": ("uint8", 1 / 255, *CIFAR100_STATS),
    "imagefolder": ("uint8", 1 / 255, None, None),
}


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _close(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(math.isclose(u, v, rel_tol=1e-6, abs_tol=1e-9) for u, v in zip(a, b))


@dataclass(frozen=True)
class Preprocessing:
    """How stored samples become model inputs: `x = (raw * scale - mean) / std`.

    Attributes:
        storage: what the source stores, `uint8` (pixels 0..255) or `float32`.
        scale: multiplies the stored values first (`1/255` for pixels).
        mean: per-channel value subtracted after scaling, length `C`; `None`: none.
        std: per-channel value divided by after that, length `C`; `None`: none.
        input_shape: shape of one model input, e.g. `(3, 32, 32)`.
    """

    storage: str
    scale: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise DataError(f"preprocessing: storage {self.storage!r}, expected one of {', '.join(STORAGES)}")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))

    def same_transform(self, other: "Preprocessing") -> bool:
        """True when `other` turns the same stored samples into the same inputs."""
        return (self.storage == other.storage and math.isclose(self.scale, other.scale, rel_tol=1e-9)
                and _close(self.mean, other.mean) and _close(self.std, other.std))

    def describe(self) -> str:
        """One line, e.g. `uint8 pixels / 255, mean (0.4914, ...), std (0.247, ...), input (3, 32, 32)`."""
        if self.storage == "uint8":
            scale = "/ 255" if math.isclose(self.scale, 1 / 255) else f"x {self.scale:.6g}"
            text = f"uint8 pixels {scale}"
        else:
            text = "float32 values" + ("" if self.scale == 1.0 else f" x {self.scale:.6g}")
        if self.mean is not None:
            text += ", mean (" + ", ".join(f"{m:.4g}" for m in self.mean) + ")"
        if self.std is not None:
            text += ", std (" + ", ".join(f"{s:.4g}" for s in self.std) + ")"
        return text + f", input {self.input_shape}"

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (safe in a `weights_only` checkpoint)."""
        return {"storage": self.storage, "scale": self.scale,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, values: Any, source: str = "checkpoint") -> "Preprocessing":
        """Read back `to_dict()`.

        Raises:
            CheckpointError: naming `source`, when a key is missing or has the wrong type.
        """
        keys = ("storage", "scale", "mean", "std", "input_shape")
        if not isinstance(values, Mapping) or any(k not in values for k in keys):
            raise CheckpointError(f"{source}: field 'preprocessing' must be a mapping with keys "
                                  f"{', '.join(keys)}, got {values!r}")
        try:
            return cls(values["storage"], values["scale"], values["mean"], values["std"], values["input_shape"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: field 'preprocessing' is malformed ({e}): {dict(values)!r}") from None


def preprocessing_for_spec(spec_or_name: str, input_shape: Sequence[int]) -> Preprocessing:
    """The preprocessing `load_data` applies for a data spec (`cifar10:DIR`) or name.

    Used for checkpoints written before checkpoints recorded their preprocessing: their
    data spec says what the model was trained on.

    Args:
        spec_or_name: a data spec (`cifar10:DIR`, `digits`) or its name part.
        input_shape: shape of one input, e.g. `(3, 32, 32)`.

    Raises:
        DataError: the name is not one of `load_data`'s data sets.
    """
    name = str(spec_or_name).partition(":")[0].strip().lower()
    if name not in SPEC_PREPROCESSING:
        raise DataError(f"data spec {spec_or_name!r}: unknown data set, cannot tell its preprocessing; "
                        f"expected one of {', '.join(SPEC_PREPROCESSING)}")
    storage, scale, mean, std = SPEC_PREPROCESSING[name]
    return Preprocessing(storage, scale, mean, std, tuple(input_shape))


def trained_preprocessing(ckpt: dict[str, Any], source: str = "checkpoint") -> tuple[Preprocessing, str]:
    """The preprocessing the checkpoint's model was trained with, and where it came from.

    Checkpoints record it (`preprocessing`); for older ones it is derived from the data
    spec they were trained on.

    Raises:
        CheckpointError: the recorded field is malformed.
        DataError: an older checkpoint's data spec names no known data set.
    """
    recorded = ckpt.get("preprocessing")
    if recorded is not None:
        return Preprocessing.from_dict(recorded, source), "recorded in the checkpoint"
    spec = ckpt.get("data")
    return preprocessing_for_spec(spec, ckpt["input_shape"]), f"derived from its training data {spec!r}"


def preprocessing_of(dataset: Dataset) -> Preprocessing | None:
    """The preprocessing an `InMemoryDataset` applies; `None` for other datasets."""
    if not isinstance(dataset, InMemoryDataset):
        return None
    storage = str(dataset.samples.dtype).removeprefix("torch.")
    if storage not in STORAGES:
        return None
    return Preprocessing(storage, dataset.scale, dataset.mean, dataset.std, dataset.input_shape)


def conform(dataset: Dataset, trained: Preprocessing, source: str = "data") -> tuple[Dataset, str | None]:
    """`dataset` yielding inputs prepared as `trained` says.

    Same stored type and input shape: the dataset is re-read with the trained scale,
    mean and std (nothing is copied). Anything else cannot be converted without guessing.

    Args:
        dataset: an `InMemoryDataset` (what `load_data` returns), yielding `(x, y)`.
        trained: the preprocessing the model was trained with.
        source: the data spec, named in notes and errors.

    Returns:
        `(dataset, note)`: the dataset to score, and what was converted (`None` when the
        source already prepared its samples as the model expects).

    Raises:
        DataError: naming `source`, when its stored type or input shape differs from the
            trained one, or its samples are not held by an `InMemoryDataset`.
    """
    own = preprocessing_of(dataset)
    if own is None:
        raise DataError(f"{source}: cannot check how this data set prepares its samples "
                        f"({type(dataset).__name__}); expected a data set read by load_data")
    if own.input_shape != trained.input_shape:
        raise DataError(f"{source}: inputs are {own.input_shape}, but the model was trained on "
                        f"{trained.input_shape} (nothing is resized or converted between channel counts)")
    if own.storage != trained.storage:
        raise DataError(f"{source}: holds {own.storage} samples, but the model was trained on "
                        f"{trained.describe()}; the two cannot be converted into each other")
    if own.same_transform(trained):
        return dataset, None
    converted = dataset.with_preprocessing(scale=trained.scale, mean=trained.mean, std=trained.std)
    return converted, f"{source} reads as {own.describe()}; converted to the trained {trained.describe()}"
