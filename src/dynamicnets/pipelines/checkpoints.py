"""Rebuild a trained model from a checkpoint written by the Trainer."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import create_model
from ..training.checkpoint import MODEL_FIELDS, check_compatible, check_fields, check_finite, load_checkpoint


def run_checkpoint(given: str | Path) -> Path:
    """`given` when it is a checkpoint file, or the `best.pt` (else `last.pt`) of the run
    folder it names.

    Raises:
        CheckpointError: naming `given`, when it is neither a file nor a run folder with a
            checkpoint (a run still in its first epoch has none).
    """
    path = Path(given)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: run folder without best.pt or last.pt (still training?)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    return path


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model saved in `path`, in eval mode on `device`, and the checkpoint dict.

    Args:
        path: a `best.pt` / `last.pt` written by the Trainer.
        device: where to put the model.

    Returns:
        `(model, checkpoint dict)`.

    Raises:
        CheckpointError: naming the file, when it is missing/corrupt, lacks the model
            description or has fields of the wrong type, names an unknown model or
            arguments the model does not take, holds NaN/inf weights, or its weights do
            not fit the model it names.
    """
    ckpt = load_checkpoint(path)
    check_fields(ckpt, MODEL_FIELDS, source=str(path))
    try:
        model = create_model(
            ckpt["model_name"],
            num_classes=ckpt["num_classes"],
            in_chans=ckpt["input_shape"][0],
            **ckpt["model_args"],
        )
    except Exception as e:  # unknown model, arguments it refuses or values it cannot build with
        raise CheckpointError(f"{path}: cannot rebuild the model it holds: {e}") from e
    check_compatible(ckpt, ckpt["model_name"], model, source=str(path))
    check_finite(ckpt["model"], source=str(path))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
