"""Label checks: every label must be one of the data set's declared classes.

A label outside ``[0, num_classes)`` is a corrupt file, not a new class: it is refused with
the file, the index and the value, so a damaged label never silently changes the size of
the model's output layer.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError


def check_labels(labels: np.ndarray | torch.Tensor, num_classes: int, source: str) -> None:
    """Refuse labels outside ``[0, num_classes)``.

    Args:
        labels: ``(N,)`` integer labels of any integer dtype (unsigned ones are compared
            as they are, never wrapped to negative numbers).
        num_classes: the number of classes the data set declares.
        source: the file the labels come from, named in the error.

    Raises:
        DataError: naming `source`, the first offending index and its value, and how many
            labels are out of range.
    """
    values = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if values.size == 0:
        return
    if values.dtype.kind not in "iu":
        raise DataError(f"{source}: labels are of type {values.dtype}, expected integers")
    outside = (values >= num_classes) if values.dtype.kind == "u" else (values < 0) | (values >= num_classes)
    bad = np.flatnonzero(outside)
    if bad.size:
        index = int(bad[0])
        raise DataError(
            f"{source}: label {int(values[index])} at index {index} is outside the {num_classes} classes "
            f"of the data set (expected 0..{num_classes - 1}); {bad.size} label(s) out of range"
        )
