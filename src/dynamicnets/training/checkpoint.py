"""Checkpoint files: atomic save, safe load (`weights_only=True`), compatibility check.

A checkpoint is a dict of tensors, dicts, lists and Python primitives only, so that
`torch.load(..., weights_only=True)` reads it without running any pickled code. The
trainer's checkpoints hold (see `Trainer` for the writer):

    format, model, model_name, model_args, optimizer, scheduler, epoch (finished epochs),
    step (global optimizer steps), best_val_accuracy, best_epoch, config (plain dict),
    data, num_classes, input_shape, preprocessing (how inputs were prepared: stored type,
    scale, mean, std, input shape; see `dynamicnets.data.preprocessing`), rng
    (torch/numpy/python/loader states), history (one metrics dict per finished epoch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..writing import atomic_write_with

FORMAT = "dynamicnets.checkpoint/1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically.

    The bytes go to a temporary file in the same folder, are flushed and fsync'ed, and the
    file is then renamed over `path` (`os.replace`): a crash at any point leaves either
    the old file or the new one, never a torn file; the temporary file is removed on error.
    The file gets the mode the user's umask gives, like any file the user creates.

    Args:
        path: the destination, e.g. `runs/x/last.pt`.
        state: tensors, containers and Python primitives only.

    Raises:
        OutputError: naming the path, when it cannot be written (read-only place, full
            disk, a folder in the way); the previous file is left as it was.
    """
    atomic_write_with(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, refusing pickled code.

    Returns:
        the saved dict, tensors on `map_location`.

    Raises:
        CheckpointError: naming the file, when it is missing, unreadable, corrupt, holds
            objects other than tensors/containers/primitives, or is not a dict.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by cause
        reason = type(e).__name__ + (f": {str(e).strip().splitlines()[0]}" if str(e).strip() else "")
        raise CheckpointError(
            f"{path}: cannot read checkpoint (corrupt, truncated, or holds objects other than "
            f"tensors, containers and primitives): {reason}"
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# field -> (what it must be, check). `model` (the state_dict) is checked by check_compatible.
_FIELD_CHECKS: dict[str, tuple[str, Any]] = {
    "format": ("a string", lambda v: isinstance(v, str)),
    "model": ("a state_dict (a mapping of names to tensors)", lambda v: isinstance(v, dict)),
    "model_name": ("a registered model name (a non-empty string)", lambda v: isinstance(v, str) and bool(v)),
    "model_args": ("a mapping of constructor argument names to values",
                   lambda v: isinstance(v, dict) and all(isinstance(k, str) and k.isidentifier() for k in v)),
    "num_classes": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "input_shape": ("a non-empty list of positive integers (the shape of one sample)",
                    lambda v: isinstance(v, (list, tuple)) and len(v) >= 1
                    and all(_is_int(d) and d >= 1 for d in v)),
    "config": ("a mapping of config keys to values", lambda v: isinstance(v, dict)),
    "data": ("a data spec string", lambda v: isinstance(v, str)),
    "optimizer": ("an optimizer state_dict (a mapping)", lambda v: isinstance(v, dict)),
    "scheduler": ("a scheduler state_dict (a mapping)", lambda v: isinstance(v, dict)),
    "epoch": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "step": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "best_val_accuracy": ("a number or null", lambda v: v is None or _is_number(v)),
    "best_epoch": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v >= 1)),
    "rng": ("a mapping of random-generator states", lambda v: isinstance(v, dict)),
    "history": ("a list of per-epoch metric mappings", lambda v: isinstance(v, list)
                and all(isinstance(r, dict) for r in v)),
}

MODEL_FIELDS = ("model", "model_name", "model_args", "num_classes", "input_shape")
"""Fields a checkpoint needs to rebuild its model (`dynamicnets eval`)."""

TRAINING_FIELDS = MODEL_FIELDS + ("format", "optimizer", "scheduler", "epoch", "step", "best_val_accuracy",
                                  "best_epoch", "config", "rng", "history")
"""Fields a checkpoint needs to resume training."""


def check_fields(ckpt: dict[str, Any], required: tuple[str, ...], source: str = "checkpoint") -> None:
    """Check that `ckpt` has the `required` fields, and that every known field present has
    the right type (a checkpoint may load with `weights_only=True` and still hold, say, a
    list where the model arguments should be).

    Args:
        ckpt: the dict `load_checkpoint` returned.
        required: field names that must be present (`MODEL_FIELDS`, `TRAINING_FIELDS`).
        source: the file, named in the error.

    Raises:
        CheckpointError: naming `source`, the first missing field, or the first field of
            the wrong type and what it should be.
    """
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{source}: not a dynamicnets training checkpoint (no {', '.join(missing)})")
    for key, (expected, ok) in _FIELD_CHECKS.items():
        if key in ckpt and not ok(ckpt[key]):
            shown = repr(ckpt[key]) if not isinstance(ckpt[key], (dict, list)) else type(ckpt[key]).__name__
            if len(shown) > 60:
                shown = shown[:57] + "..."
            raise CheckpointError(f"{source}: field {key!r} should be {expected}, found {shown}")


def first_non_finite(tensors: dict[str, Any]) -> str | None:
    """Name of the first floating-point tensor in `tensors` holding NaN or infinity, else None.

    Args:
        tensors: a state_dict (name -> tensor; other values are skipped).
    """
    for key, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            if not bool(torch.isfinite(tensor).all()):
                return key
    return None


def check_finite(tensors: dict[str, Any], source: str = "checkpoint") -> None:
    """Refuse weights holding NaN or infinity (a diverged run).

    Args:
        tensors: a state_dict.
        source: the file, named in the error.

    Raises:
        CheckpointError: naming `source` and the first non-finite tensor.
    """
    key = first_non_finite(tensors)
    if key is not None:
        raise CheckpointError(
            f"{source}: tensor {key!r} holds NaN or infinite values (the run diverged); "
            f"these weights cannot be used"
        )
