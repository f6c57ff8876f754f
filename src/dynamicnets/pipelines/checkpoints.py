"""Rebuild a trained model from a checkpoint written by the Trainer."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import create_model
from ..training.checkpoint import check_compatible, load_checkpoint


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model saved in `path`, in eval mode on `device`, and the checkpoint dict.

    Raises:
        CheckpointError: the file is missing/corrupt, lacks the model description, or its
            weights do not fit the model it names.
    """
    ckpt = load_checkpoint(path)
    missing = [k for k in ("model_name", "model_args", "num_classes", "input_shape") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a dynamicnets training checkpoint (no {', '.join(missing)})")
    model = create_model(
        ckpt["model_name"],
        num_classes=ckpt["num_classes"],
        in_chans=ckpt["input_shape"][0],
        **ckpt["model_args"],
    )
    check_compatible(ckpt, ckpt["model_name"], model, source=str(path))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
