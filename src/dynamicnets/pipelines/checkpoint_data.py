"""The data a trained checkpoint is run on, prepared as its model was trained.

`dynamicnets eval` and `dynamicnets explain` read a checkpoint's data the same way: the
data spec (the checkpoint's own unless another is given), the seeded validation split of
its training config, the checkpoint's preprocessing applied to whatever the spec reads, and
one named split (`val`, `test` or `all`), described in words with its size.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from ..data import DataBundle, load_data
from ..data.preprocessing import Preprocessing, conform, trained_preprocessing
from ..errors import ConfigError, DataError, SplitError

SPLITS = ("val", "test", "all")
"""`val`: the seeded validation split carved from the training files (as in training);
`test`: the source's test files; `all`: every sample of the source."""


@dataclass
class CheckpointData:
    """A checkpoint's data, prepared as its model was trained, and one split of it.

    Attributes:
        spec: the data spec read.
        bundle: every split of `spec`, each prepared with `trained`.
        dataset: the split asked for, yielding `(x, y)` with `x` of the trained input
            shape, e.g. `(3, 32, 32)`.
        scored_on: that split in words, with its size.
        trained: the preprocessing the model was trained with.
        origin: where `trained` came from (recorded in the checkpoint, or derived).
        converted: what was converted to bring `spec`'s samples to `trained` (`None`:
            nothing).
        val_size: the validation split's size of the training config.
        seed: the seed that carved it.
    """

    spec: str
    bundle: DataBundle
    dataset: Dataset
    scored_on: str
    trained: Preprocessing
    origin: str
    converted: str | None
    val_size: Any
    seed: int


def check_split(split: str) -> str:
    """`split`, after checking it is one of `SPLITS`.

    Raises:
        ConfigError: naming `--split`, for any other value.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    return split




def load_checkpoint_data(ckpt: dict[str, Any], checkpoint: str, data: str | None, split: str) -> CheckpointData:
    """The data `ckpt` was trained on (or `data`), prepared as it was trained, and `split`.

    Args:
        ckpt: a checkpoint dict written by the Trainer (see `load_trained_model`).
        checkpoint: its path, named in messages.
        data: data spec to read; `None`: the one the checkpoint was trained on.
        split: one of `SPLITS`. `all` carves no validation split (the folder may be
            smaller than the split the model was trained with).

    Returns:
        `CheckpointData`.

    Raises:
        ConfigError: an unknown split.
        DataError: the data cannot be read, has other classes than the checkpoint, has no
            test files for `split="test"`, or cannot be prepared as the model was trained.
        CheckpointError: the checkpoint's recorded preprocessing is malformed.
    """
    check_split(split)
    config = ckpt.get("config", {})
    spec = data or ckpt.get("data")
    trained, origin = trained_preprocessing(ckpt, checkpoint)
    val_size, seed = config.get("val_size", 0.1), config.get("seed", 0)
    try:
        bundle = load_data(spec, val_size=None if split == "all" else val_size, seed=seed, augment=False)
    except SplitError as error:
        # the recorded split does not fit this data: say why it does not fit the model first, if it does not
        _conform_bundle(_check_classes(load_data(spec, val_size=None, seed=seed, augment=False), ckpt, spec,
                                       checkpoint), trained, spec)
        raise DataError(f"{spec}: {checkpoint} was validated on a split carved with val_size={val_size}, seed={seed} "
                        f"(recorded with it), which does not fit this data ({error}); use --split all to score "
                        "every sample") from None
    bundle, converted = _conform_bundle(_check_classes(bundle, ckpt, spec, checkpoint), trained, spec)
    dataset, scored_on = _split(bundle, split, spec, val_size, seed)
    return CheckpointData(spec=spec, bundle=bundle, dataset=dataset, scored_on=scored_on, trained=trained,
                          origin=origin, converted=converted, val_size=val_size, seed=seed)


def _check_classes(bundle: DataBundle, ckpt: dict[str, Any], spec: str, checkpoint: str) -> DataBundle:
    if bundle.num_classes != ckpt["num_classes"]:
        raise DataError(f"{spec}: {bundle.num_classes} classes, but {checkpoint} was trained on "
                        f"{ckpt['num_classes']} classes")
    return bundle


def _conform_bundle(bundle: DataBundle, trained: Preprocessing, spec: str) -> tuple[DataBundle, str | None]:
    """The bundle's splits prepared as the model was trained, and what was converted."""
    train = conform(bundle.train, trained, spec)[0]
    val, note = conform(bundle.val, trained, spec)
    test = None if bundle.test is None else conform(bundle.test, trained, f"{spec} (test files)")[0]
    return replace(bundle, train=train, val=val, test=test), note


def _split(bundle: DataBundle, split: str, spec: str, val_size, seed: int) -> tuple[Dataset, str]:
    """`(dataset, description)` of the split asked for."""
    whole = bundle.train.whole()
    if split == "val":
        return bundle.val, (f"val: {len(bundle.val)} of the {len(whole)} samples of the training files of {spec}, "
                            f"carved with val_size={val_size}, seed={seed} (use --split all to score every sample)")
    if split == "test":
        if bundle.test is None:
            raise DataError(f"{spec}: has no test split (the official test files are not in that folder); "
                            "use --split val or --split all")
        return bundle.test, f"test: the {len(bundle.test)} samples of the test files of {spec}"
    if bundle.test is None:
        return whole, f"all: every one of the {len(whole)} samples of {spec}"
    return ConcatDataset([whole, bundle.test]), (f"all: every one of the {len(whole) + len(bundle.test)} samples "
                                                 f"of {spec} (training and test files)")
