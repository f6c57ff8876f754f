"""Start a run from another run's weights, and the temperature annealed during training."""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..execution import Execution, supported_executions
from ..gates.schedules import CosineDecay, ExponentialDecay, LinearDecay
from .checkpoint import load_checkpoint

PRETRAINED_PREFIX = "pretrained:"
_SCHEDULES = {"exponential": ExponentialDecay, "linear": LinearDecay, "cosine": CosineDecay}


def load_initial_weights(model: nn.Module, path: str | Path, prefix: str = "") -> tuple[int, int]:
    """Copy the model weights of the training checkpoint `path` into `model`.

    `path` is a training checkpoint file, or `pretrained:MODEL:TAG` for the weights shipped
    with the package (`create_model(MODEL, pretrained=TAG)`'s, sha256 checked), so that a
    fine-tuning recipe runs on any machine. Checkpoint key `k` goes to model key
    `prefix + k`. Model tensors that the checkpoint lacks keep their values (new gates,
    routers, heads).

    Returns:
        `(copied, total)`: tensors copied, tensors in the model's state_dict.

    Raises:
        CheckpointError: naming the file and the key, when the checkpoint holds no model
            weights, a key has no counterpart in the model, or the shapes differ.
    """
    if str(path).startswith(PRETRAINED_PREFIX):
        weights = _shipped_weights(str(path))
    else:
        weights = load_checkpoint(path).get("model")
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{path}: key 'model': expected the state_dict of a training checkpoint")
    own = model.state_dict()
    for key, tensor in weights.items():
        target = prefix + key
        if target not in own:
            raise CheckpointError(
                f"{path}: checkpoint key {key!r} (as {target!r}) does not exist in the model; "
                f"check init_prefix={prefix!r} (model keys look like {next(iter(own))!r})"
            )
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(own[target].shape):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(
                f"{path}: checkpoint key {key!r} has shape {shape}, the model's {target!r} has "
                f"{tuple(own[target].shape)} (another depth or width?)"
            )
    with torch.no_grad():
        for key, tensor in weights.items():
            own[prefix + key].copy_(tensor)
    return len(weights), len(own)


def parse_pretrained_spec(spec: str, key: str) -> tuple[str, str]:
    """`(MODEL, TAG)` of `'pretrained:MODEL:TAG'`, the config `key`'s value.

    Raises:
        ConfigError: naming `key`, for any other form.
    """
    parts = spec[len(PRETRAINED_PREFIX):].split(":") if spec.startswith(PRETRAINED_PREFIX) else []
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{key}: expected 'pretrained:MODEL:TAG' (e.g. 'pretrained:resnet56:cifar10'), "
                          f"got {spec!r}")
    return parts[0], parts[1]


def _shipped_weights(spec: str) -> dict[str, torch.Tensor]:
    from ..models.pretrained import load_pretrained_state, pretrained_weights

    return load_pretrained_state(pretrained_weights(*parse_pretrained_spec(spec, "init_from")))


def execution_kwargs(execution: str, model: nn.Module) -> dict:
    """Forward keyword arguments for `TrainConfig.train_execution` (`{}` for `default`).

    Raises:
        ConfigError: a mode the model does not list in its `execution_modes`
            (`dynamicnets.execution.SupportsExecution`).
    """
    if execution == "default":
        return {}
    modes = supported_executions(model)
    if Execution(execution) not in modes:
        raise ConfigError(
            f"key 'train_execution': model {type(model).__name__} has no {execution!r} execution "
            f"(it supports {[m.value for m in modes] or 'none: it is static'}); use 'default'"
        )
    return {"execution": Execution(execution)}


def temperature_schedule(spec: dict, steps_per_epoch: int, model: nn.Module):
    """`step -> temperature` from a checked `TrainConfig.temperature_schedule` mapping.

    Raises:
        ConfigError: the model's `forward` takes no `temperature` argument.
    """
    if "temperature" not in inspect.signature(model.forward).parameters:
        raise ConfigError(
            f"key 'temperature_schedule': model {type(model).__name__} has no `temperature` "
            f"forward argument to anneal (dynamic-convolution models such as resnet20_dyconv do)"
        )
    total = max(1, round(spec["epochs"] * steps_per_epoch))
    return _SCHEDULES[spec["kind"]](float(spec["start"]), float(spec["end"]), total)
