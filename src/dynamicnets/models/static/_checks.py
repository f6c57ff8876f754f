"""Argument and input-shape checks shared by the static models (raise `ConfigError`)."""
from __future__ import annotations

from collections.abc import Sequence

from ...errors import ConfigError


def require_positive(model: str, **values: int) -> None:
    """Raise `ConfigError` naming `model` and the key when a size argument is not >= 1."""
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"model {model!r}: {key} must be a positive int, got {value!r}")


def check_input_shape(
    model: str, input_shape: Sequence[int], in_chans: int, spatial_dims: int
) -> tuple[int, ...]:
    """Validate a per-sample input shape `(C, *spatial)` against the model's settings.

    Returns:
        the shape as a tuple of ints.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 1 + spatial_dims or shape[0] != in_chans or min(shape) < 1:
        axes = ", ".join(["C", "L"] if spatial_dims == 1 else ["C", "H", "W"][: 1 + spatial_dims])
        raise ConfigError(
            f"model {model!r} expects per-sample inputs of shape ({axes}) with C = in_chans = "
            f"{in_chans}, got {shape}; build the model with in_chans matching the data"
        )
    return shape
