"""Rebuild a trained model from a checkpoint written by the Trainer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models import create_model
from ..models.pretrained import pretrained_weights
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


def check_model_source(checkpoint: str | None, model: str | None, pretrained: str | bool | None,
                       command: str) -> None:
    """A command reads a trained model from exactly one place: `--checkpoint`, or
    `--model NAME --pretrained [TAG]` for shipped weights.

    Raises:
        ConfigError: naming the options, when both, neither or half of the second are given.
    """
    if checkpoint is not None and (model is not None or pretrained not in (None, False)):
        raise ConfigError("--checkpoint and --model/--pretrained: give one, a checkpoint or shipped weights")
    if checkpoint is None:
        if model is None:
            raise ConfigError(f"{command} needs --checkpoint CK, or --model NAME --pretrained [TAG] for shipped "
                              "weights (`dynamicnets models --pretrained` lists them)")
        if pretrained in (None, False):
            raise ConfigError(f"--model {model}: add --pretrained [TAG] for its shipped weights "
                              "(or give --checkpoint instead)")


def check_shipped_weights_source(checkpoint: str | None, model: str | None, pretrained: str | bool | None,
                                 data: str | None, command: str) -> None:
    """`check_model_source`, and shipped weights need `--data` (they carry no data path).

    Raises:
        ConfigError: naming the options.
    """
    check_model_source(checkpoint, model, pretrained, command)
    if checkpoint is None and data is None:
        raise ConfigError("--data: shipped weights carry no data path; give the data they were trained on, e.g. "
                          "--data cifar10:path/to/cifar-10-batches-py (its validation split is carved as in training)")


def load_model_source(checkpoint: str | None, model: str | None, pretrained: str | bool | None,
                      pretrained_dir: str | None = None,
                      device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any], str, dict[str, Any]]:
    """A trained model from a checkpoint (a file or run folder) or from shipped weights
    (sha256 checked), in eval mode on `device`.

    Returns:
        `(model, its checkpoint fields, its name in messages, what a result says it is:
        {"checkpoint": path} or {"pretrained", "weights", "sha256"})`.

    Raises:
        CheckpointError: an unreadable checkpoint, or a shipped file missing or failing
            its sha256 check.
    """
    if checkpoint is not None:
        path = run_checkpoint(checkpoint)
        net, ckpt = load_trained_model(path, device)
        return net, ckpt, str(path), {"checkpoint": str(path)}
    weights = pretrained_weights(model, pretrained, pretrained_dir)
    net = create_model(weights.model, pretrained=weights.tag, pretrained_dir=pretrained_dir)
    origin = {"pretrained": weights.tag, "weights": str(weights.path(pretrained_dir)), "sha256": weights.sha256}
    return net.to(device).eval(), weights.checkpoint_fields(), f"pretrained weights {weights.model}/{weights.tag}", origin
