"""Draw where a trained spatially dynamic checkpoint spends its computation.

`explain_checkpoint` loads a checkpoint as `dynamicnets eval` does (its model, its data
or another spec prepared with its preprocessing, one named split), takes the first images
of the split and writes `save_spatial_maps`'s PNGs for them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.preprocessing import Preprocessing
from ..errors import ConfigError
from ..profiling.spatial_maps import SpatialMaps, save_spatial_maps
from ..training.trainer import resolve_device
from .checkpoint_data import check_split, load_checkpoint_data
from .checkpoints import check_shipped_weights_source, load_model_source


@dataclass
class ExplainRequest:
    """What `dynamicnets explain` asks for.

    Attributes:
        checkpoint: a `best.pt` / `last.pt` written by the trainer, or its run folder (or
            give `model` and `pretrained`).
        model, pretrained: shipped weights instead: the registered model and its tag
            (`True`: its only or default tag).
        data: data spec to draw from; `None`: the one the checkpoint was trained on
            (required for shipped weights).
        split: `val`, `test` or `all` (see `checkpoint_data.SPLITS`).
        num_images: the first this many images of the split are drawn.
        out_dir: where the PNGs go; `None`: `spatial_maps/` beside the checkpoint, or
            `spatial_maps/MODEL_TAG/` in the working directory for shipped weights.
        device: `cpu`, `cuda` or `auto`.
    """

    checkpoint: str | None = None
    model: str | None = None
    pretrained: str | bool | None = None
    data: str | None = None
    split: str = "val"
    num_images: int = 8
    out_dir: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_split(self.split)
        check_shipped_weights_source(self.checkpoint, self.model, self.pretrained, self.data, "explain")
        if not (isinstance(self.num_images, int) and self.num_images >= 1):
            raise ConfigError(f"--num-images: expected a positive count, got {self.num_images!r}")


@dataclass(frozen=True)
class Explanation:
    """What `explain_checkpoint` drew.

    Attributes:
        maps: the PNGs and values (see `SpatialMaps`).
        model: the checkpoint's model name.
        drawn_from: the split in words, with its size.
        out_dir: the folder written.
    """

    maps: SpatialMaps
    model: str
    drawn_from: str
    out_dir: Path


def explain_checkpoint(request: ExplainRequest) -> Explanation:
    """Per-block execution maps of `request.checkpoint` on the first images of a split.

    The images are prepared with the checkpoint's preprocessing and shown undone: pixel
    data as the stored pixels, float data min-max scaled.

    Returns:
        `Explanation`: the PNGs written (one per image, then the summary) and what they show.

    Raises:
        CheckpointError: the checkpoint is unreadable or does not fit its model.
        DataError: the data cannot be read, has other classes, or cannot be prepared as
            the model was trained.
        ConfigError: the model makes no spatial decisions, or its inputs are not images.
        OutputError: a PNG cannot be written.
    """
    device = resolve_device(request.device, what="--device")
    model, ckpt, source, origin = load_model_source(request.checkpoint, request.model, request.pretrained,
                                                    device=device)
    prepared = load_checkpoint_data(ckpt, source, request.data, request.split)
    count = min(request.num_images, len(prepared.dataset))
    if count == 0:
        raise ConfigError(f"--split {request.split}: {prepared.scored_on}; there is no image to draw")
    images = torch.stack([prepared.dataset[i][0] for i in range(count)]).to(device)
    if request.out_dir:
        out_dir = Path(request.out_dir)
    elif "checkpoint" in origin:
        out_dir = Path(origin["checkpoint"]).parent / "spatial_maps"
    else:
        out_dir = Path("spatial_maps") / f"{ckpt['model_name']}_{origin['pretrained']}"
    shown = _display_stats(prepared.trained)
    maps = save_spatial_maps(model, images, out_dir, max_images=count,
                             mean=shown[0] if shown else None, std=shown[1] if shown else None)
    return Explanation(maps=maps, model=str(ckpt["model_name"]), drawn_from=prepared.scored_on, out_dir=out_dir)


def _display_stats(trained: Preprocessing) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """`(mean, std)` that turn model inputs back into pixels in `[0, 1]`, for pixel data
    read as `raw / 255`; `None` (min-max scaling) for anything else."""
    if trained.storage != "uint8" or not math.isclose(trained.scale, 1 / 255):
        return None
    channels = trained.input_shape[0]
    return trained.mean or (0.0,) * channels, trained.std or (1.0,) * channels
