"""Checkpoint files: atomic save, safe load (`weights_only=True`), compatibility check.

A checkpoint is a dict of tensors, dicts, lists and Python primitives only, so that
`torch.load(..., weights_only=True)` reads it without running any pickled code. The
trainer's checkpoints hold (see `Trainer` for the writer):

    format, model, model_name, model_args, optimizer, scheduler, epoch (finished epochs),
    step (global optimizer steps), best_val_accuracy, best_epoch, config (plain dict),
    data, num_classes, input_shape, rng (torch/numpy/python/loader states), history
    (one metrics dict per finished epoch).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

FORMAT = "dynamicnets.checkpoint/1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically.

    The bytes go to a temporary file in the same folder, are flushed and fsync'ed, and the
    file is then renamed over `path` (`os.replace`): a crash at any point leaves either
    the old file or the new one, never a torn file; the temporary file is removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (best effort; not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, refusing pickled code.

    Returns:
        the saved dict, tensors on `map_location`.

    Raises:
        CheckpointError: naming the file, when it is missing, unreadable, corrupt, holds
            objects other than tensors/containers/primitives, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by cause
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot read checkpoint (corrupt, truncated, or holds objects other than "
            f"tensors, containers and primitives): {first_line}"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found {type(state).__name__}")
    return state


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (else `model`)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def check_compatible(ckpt: dict[str, Any], model_name: str, model: nn.Module, source: str = "checkpoint") -> None:
    """Check that `ckpt` holds weights of `model` (registered as `model_name`).

    Raises:
        CheckpointError: naming `source`, when the checkpoint has no model weights, was
            saved from another model, or its state_dict keys or shapes differ (the first
            differing key is named).
    """
    weights = ckpt.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{source}: not a dynamicnets training checkpoint (no 'model' state_dict)")
    saved_name = ckpt.get("model_name")
    if saved_name != model_name:
        raise CheckpointError(f"{source}: checkpoint holds model {saved_name!r}, expected {model_name!r}")
    expected = unwrap_model(model).state_dict()
    for key, tensor in expected.items():
        if key not in weights:
            raise CheckpointError(f"{source}: key {key!r} of model {model_name!r} is missing from the checkpoint")
        saved = weights[key]
        if not isinstance(saved, torch.Tensor):
            raise CheckpointError(f"{source}: key {key!r} is not a tensor in the checkpoint")
        if tuple(saved.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(saved.shape)} in the checkpoint, "
                f"but {tuple(tensor.shape)} in model {model_name!r} (other model arguments?)"
            )
    for key in weights:
        if key not in expected:
            raise CheckpointError(f"{source}: checkpoint key {key!r} does not exist in model {model_name!r}")
