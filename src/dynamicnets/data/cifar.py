"""Reader for the official python-pickle layout of CIFAR-10 and CIFAR-100.

Each batch file is a pickled dict with ``b'data'``: uint8 ``(N, 3072)`` (R, G, B planes,
each 32x32 row-major) and a label list (``b'labels'`` for CIFAR-10, ``b'fine_labels'`` for
CIFAR-100). Pickles can run arbitrary code when loaded, so the unpickler here accepts only
the few numpy globals an array needs and refuses anything else.
"""
from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .files import read_bytes
from .labels import check_labels

_SIDE = 32
_ROW = 3 * _SIDE * _SIDE


def _numpy_multiarray():
    core = getattr(np, "_core", None)  # numpy >= 2 renamed numpy.core to numpy._core
    return core.multiarray if core is not None else np.core.multiarray


class _ForeignGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowed few."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild plain numpy arrays."""

    def find_class(self, module: str, name: str):
        multiarray = _numpy_multiarray()
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy.core.multiarray", "scalar"): multiarray.scalar,
            ("numpy._core.multiarray", "scalar"): multiarray.scalar,
            ("_codecs", "encode"): codecs.encode,  # bytes pickled by Python 3 at protocol < 3
        }
        if (module, name) not in allowed:
            raise _ForeignGlobal(f"{module}.{name}")
        return allowed[(module, name)]


def load_pickle(path: Path) -> dict:
    """Unpickle a CIFAR file (``encoding='bytes'``, numpy arrays only).

    Returns:
        the dict stored in the file.

    Raises:
        DataError: naming the file, when it is truncated, corrupt, or not a dict.
    """
    raw = read_bytes(path)
    try:
        content = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _ForeignGlobal as err:
        raise DataError(
            f"'{path}' references the global '{err}', which a CIFAR file never needs; "
            "refusing to load global code from a pickle (expected only numpy arrays and lists)"
        ) from err
    except Exception as err:  # pickle raises many types (EOFError, UnpicklingError, ...)
        raise DataError(f"'{path}' is a truncated or corrupt pickle: {err}") from err
    if not isinstance(content, dict):
        raise DataError(f"'{path}' holds a {type(content).__name__}, expected a dict")
    return content


def _require_key(content: dict, key: bytes, path: Path):
    if key not in content:
        found = ", ".join(repr(k) for k in content) or "none"
        raise DataError(f"'{path}' has no key {key!r}; keys found: {found}")
    return content[key]


def read_cifar_batch(
    path: Path, label_key: bytes, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR batch file.

    Args:
        path: e.g. ``data_batch_1`` / ``test_batch`` (CIFAR-10) or ``train`` / ``test``
            (CIFAR-100).
        label_key: ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100).
        num_classes: when given, every label must lie in ``[0, num_classes)``.

    Returns:
        images uint8 ``(N, 3, 32, 32)`` and labels int64 ``(N,)``.

    Raises:
        DataError: naming the file, for missing keys, images of the wrong type or shape,
            no labels, labels that are not integers, a count of labels that differs from
            the count of images, or a label outside the classes (with its index).
    """
    content = load_pickle(path)
    data = np.asarray(_require_key(content, b"data", path))
    labels = np.asarray(_require_key(content, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise DataError(
            f"'{path}' b'data' is {data.dtype} of shape {data.shape}, expected uint8 (N, {_ROW})"
        )
    if labels.ndim != 1:
        raise DataError(f"'{path}' {label_key!r} has shape {labels.shape}, expected a flat list of labels")
    if len(labels) == 0:
        if len(data) == 0:
            raise DataError(f"'{path}' holds no images; expected at least one")
        raise DataError(f"'{path}' has {len(data)} images but an empty label list {label_key!r}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"'{path}' {label_key!r} holds {labels.dtype} values (first: {labels[0]!r}), expected integer labels"
        )
    if len(labels) != len(data):
        raise DataError(
            f"'{path}' has {len(data)} images but {len(labels)} labels in {label_key!r}"
        )
    if num_classes is not None:
        check_labels(labels, num_classes, f"'{path}' {label_key!r}")
    elif labels.dtype.kind == "u" and labels.max() > np.iinfo(np.int64).max:
        index = int(np.argmax(labels > np.iinfo(np.int64).max))
        raise DataError(f"'{path}' {label_key!r}: label {int(labels[index])} at index {index} is not a class index")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, _SIDE, _SIDE))
    return images, torch.from_numpy(labels.astype(np.int64))


def read_label_names(path: Path, key: bytes) -> list[str]:
    """Read the class names of a ``batches.meta`` / ``meta`` file.

    Args:
        path: the meta file.
        key: ``b'label_names'`` (CIFAR-10) or ``b'fine_label_names'`` (CIFAR-100).

    Returns:
        the class names in label order.
    """
    names = _require_key(load_pickle(path), key, path)
    if not isinstance(names, list):
        raise DataError(f"'{path}' {key!r} is a {type(names).__name__}, expected a list")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
