"""Model registry (timm style): `@register_model`, `create_model`, `list_models`, `model_info`.

Every registered constructor is recorded with its metadata:

- `family`: the sub-package of `dynamicnets.models` it lives in (`static`, `depth` (early
  exits), `skipping`, `width`, `parameters`, `spatial`, `temporal`, `transformers`), or the family
  declared with `register_model(family=...)`; `"user"` for a model registered outside
  the package without one.
- `description`: the first sentence of the constructor's docstring.

`model_info(name)` adds what needs the model built: its default input shape (the
model's `default_input_shape`), its parameter count and the FLOPs of one sample at that
shape: one zero sample through the eval forward (the model's default execution, compact
for a dynamic model), at the model's seeded initialisation, as the output's `flops`
reports them (the contract tests hold that figure equal to
`torch.utils.flop_counter.FlopCounterMode`, which counts a model that reports none). A
static model costs that for every input; for a dynamic model it is what that one input
executed, not a bound. (Building on the meta device saves nothing here: meta kernels of
many small layers are slower than a one-sample CPU forward, and a compact forward needs
real values for its decisions.)
"""
from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .pretrained import load_pretrained, pretrained_weights

FAMILIES = ("static", "depth", "skipping", "width", "parameters", "spatial", "temporal", "transformers")
"""The model families, one sub-package of `dynamicnets.models` each."""

_PACKAGE = __name__.rsplit(".", 1)[0]  # "dynamicnets.models"


@dataclass(frozen=True)
class RegisteredModel:
    """A registry entry: what `register_model` records.

    Attributes:
        name: the registered name (the constructor's function name).
        constructor: the function `create_model` calls with keyword arguments.
        family: one of `FAMILIES`, a declared family, or `"user"`.
        description: one line, the first sentence of the constructor's docstring.
    """

    name: str
    constructor: Callable[..., nn.Module]
    family: str
    description: str


@dataclass(frozen=True)
class ModelInfo:
    """What `model_info` reports about a registered model at its default settings.

    Attributes:
        name, family, description: as recorded by `register_model`.
        default_input_shape: the per-sample input shape the model is built for, e.g.
            `(3, 32, 32)`.
        params: number of parameters (every parameter tensor, trainable or not).
        flops: FLOPs of one zero sample of `default_input_shape` through the eval
            forward (see the module docstring).
    """

    name: str
    family: str
    description: str
    default_input_shape: tuple[int, ...]
    params: int
    flops: int


_MODELS: dict[str, RegisteredModel] = {}


def _first_sentence(doc: str | None) -> str:
    """The first sentence of the first paragraph of a docstring, on one line."""
    paragraph = inspect.cleandoc(doc or "").split("\n\n", 1)[0]
    text = " ".join(paragraph.split())
    match = re.search(r"[.!?](?=\s+[A-Z0-9`(])", text)
    return text[: match.end()] if match else text


def _family_of(fn: Callable) -> str:
    parts = getattr(fn, "__module__", "").split(".")
    prefix = _PACKAGE.split(".")
    if parts[: len(prefix)] == prefix and len(parts) > len(prefix) and parts[len(prefix)] in FAMILIES:
        return parts[len(prefix)]
    return "user"


def register_model(
    fn: Callable[..., nn.Module] | None = None, *, family: str | None = None, description: str | None = None
):
    """Register a model constructor under its function name; refuses duplicates.

    Use as `@register_model`, or `@register_model(family="depth")` to declare the family
    of a model defined outside `dynamicnets.models`.

    Args:
        fn: the constructor; it takes keyword arguments and returns an `nn.Module`.
        family: the model family (default: the sub-package `fn` is defined in, else `"user"`).
        description: one line (default: the first sentence of `fn`'s docstring).

    Returns:
        `fn` unchanged (or, without `fn`, a decorator that registers its argument).

    Raises:
        ValueError: the name is already registered, or the constructor takes a
            `pretrained` or `pretrained_dir` argument (those keywords belong to
            `create_model`).
    """
    if fn is None:
        return lambda f: register_model(f, family=family, description=description)
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered (by {_MODELS[name].constructor.__module__})")
    taken = {"pretrained", "pretrained_dir"} & set(inspect.signature(fn).parameters)
    if taken:
        raise ValueError(f"model {name!r}: a constructor must not take `{sorted(taken)[0]}` (create_model handles it)")
    if family is not None and not (isinstance(family, str) and family):
        raise ValueError(f"model {name!r}: family must be a non-empty string, got {family!r}")
    _MODELS[name] = RegisteredModel(
        name=name,
        constructor=fn,
        family=family or _family_of(fn),
        description=description if description is not None else _first_sentence(fn.__doc__),
    )
    return fn


def list_models(pattern: str = "*", *, family: str | None = None) -> list[str]:
    """Sorted names of the registered models matching a shell-style `pattern`.

    Args:
        pattern: e.g. `"resnet*"`.
        family: keep only the models of this family (see `FAMILIES`).

    Returns:
        the matching names, sorted.
    """
    return sorted(
        n for n, e in _MODELS.items() if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
    )


def list_families() -> list[str]:
    """The families of the registered models, sorted."""
    return sorted({e.family for e in _MODELS.values()})


def is_model(name: str) -> bool:
    """Whether `name` is a registered model."""
    return name in _MODELS


def registered_model(name: str) -> RegisteredModel:
    """The registry entry of `name`.

    Raises:
        ConfigError: `name` is not registered (the message lists the registered models).
    """
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _MODELS[name]


def _check_arguments(entry: RegisteredModel, kwargs: dict) -> None:
    """Raise `ConfigError` for keywords the constructor does not take or required ones missing."""
    signature = inspect.signature(entry.constructor)
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return  # the constructor passes extra keywords on: its own checks apply
    accepted = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model {entry.name!r}: unknown keyword argument{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; it accepts: {', '.join(accepted)}"
        )
    missing = [
        p.name for p in params
        if p.default is inspect.Parameter.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.name not in kwargs
    ]
    if missing:
        raise ConfigError(f"model {entry.name!r}: missing required argument(s) {', '.join(missing)}")


def create_model(
    name: str, *, pretrained: bool | str = False, pretrained_dir: str | Path | None = None, **kwargs
) -> nn.Module:
    """Build the registered model `name` with constructor keyword arguments.

    Errors raised inside the constructor (including its own `ConfigError`s and
    `TypeError`s) pass through unchanged.

    Args:
        name: a registered model name (see `list_models`).
        pretrained: `False`: freshly initialised weights. A tag such as `"cifar10"`: load
            the shipped weights of that tag, after checking their sha256 (see
            `dynamicnets.models.pretrained`; `dynamicnets models --pretrained` lists them).
            `True`: the model's only (or default) tag. The model is built with the
            arguments the weights fit (`num_classes`, ...) unless `kwargs` says otherwise.
        pretrained_dir: the folder holding `registry.json` and the weight files (default:
            the package's own).
        **kwargs: the constructor's keyword arguments (e.g. `num_classes=10`, `device`).

    Returns:
        the model, in training mode (call `.eval()` to run pretrained weights).

    Raises:
        ConfigError: `name` is not registered; a keyword is not one the constructor takes
            (the message names the model, the bad keyword and the accepted ones); no
            weights are shipped for `name` or none carry the tag (the message lists the
            tags); or the weights do not fit the arguments given.
        CheckpointError: the weight file is missing or its sha256 differs from the
            registry's (the message names the file and the expected digest).
    """
    entry = registered_model(name)
    weights = None
    if pretrained is not False and pretrained is not None:
        try:
            weights = pretrained_weights(name, pretrained, pretrained_dir)
        except ConfigError as err:
            if "backbone_args" in inspect.signature(entry.constructor).parameters:  # e.g. width_cascade
                raise ConfigError(f"{err}. {name!r} holds a registered backbone: load its shipped weights with "
                                  f"backbone_args={{'pretrained': {pretrained!r}}}") from None
            raise
        kwargs = {**weights.model_args, **kwargs}
    _check_arguments(entry, kwargs)
    model = entry.constructor(**kwargs)
    if weights is not None:
        load_pretrained(model, weights, pretrained_dir)
    return model


def _per_sample_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of `model(x)` for a one-sample `x`: the `flops` the output reports (the contract
    tests hold it equal to `FlopCounterMode`), or `FlopCounterMode`'s count when it reports none."""
    with torch.inference_mode():
        out = model(x)
    flops = getattr(out, "flops", None)
    if flops is not None:
        return int(flops.reshape(-1)[0])
    from ..flops import flop_counter

    with torch.inference_mode(), flop_counter() as counter:
        model(x)
    return int(counter.get_total_flops())


def model_info(name: str) -> ModelInfo:
    """Metadata, parameter count and per-sample FLOPs of a registered model at its defaults.

    Builds the model with its default arguments (seeded, without touching the caller's
    random state) and runs one zero sample of its `default_input_shape` through it in
    eval mode; about 0.1 s for most models, a few tenths for a ResNet-110.

    Args:
        name: a registered model name.

    Returns:
        a `ModelInfo`.

    Raises:
        ConfigError: `name` is not registered, or the model has no `default_input_shape`.
    """
    entry = registered_model(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = entry.constructor().eval()
        shape = getattr(model, "default_input_shape", None)
        if shape is None:
            raise ConfigError(f"model {name!r} has no default_input_shape; every model must expose one")
        shape = tuple(int(s) for s in shape)
        param = next(model.parameters(), None)
        x = torch.zeros((1, *shape), dtype=None if param is None else param.dtype)
        flops = _per_sample_flops(model, x)
    return ModelInfo(
        name=name,
        family=entry.family,
        description=entry.description,
        default_input_shape=shape,
        params=sum(p.numel() for p in model.parameters()),
        flops=flops,
    )
