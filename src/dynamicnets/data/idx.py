"""Reader for the IDX format of MNIST (and Fashion-MNIST, KMNIST, ...), gzipped or plain.

An IDX file is a big-endian header ``0x00 0x00 <type> <ndim>`` (read as one int32: 2051 for
unsigned-byte images of 3 dimensions, 2049 for unsigned-byte labels of 1 dimension), then
``ndim`` big-endian int32 sizes, then the values row-major.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .files import read_bytes

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def read_idx(path: str | Path, expected_magic: int) -> torch.Tensor:
    """Read an unsigned-byte IDX file.

    Args:
        path: the file, gzipped (detected by content) or plain.
        expected_magic: 2051 (images, 3 dims) or 2049 (labels, 1 dim).

    Returns:
        a uint8 tensor of shape ``(N, rows, cols)`` for images or ``(N,)`` for labels.

    Raises:
        DataError: the magic number is not the one expected, or the file is
            shorter or longer than its header says.
    """
    path = Path(path)
    raw = read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"'{path}' is truncated: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"'{path}' has IDX magic number {magic}, expected {expected_magic} "
            f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"'{path}' is truncated: {len(raw)} bytes, header alone needs {header}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_bytes = header + math.prod(shape)  # Python ints: a huge header cannot wrap around
    if len(raw) != expected_bytes:
        state = "truncated" if len(raw) < expected_bytes else "longer than its header says"
        raise DataError(
            f"'{path}' is {state}: {len(raw)} bytes, expected {expected_bytes} for shape {shape}"
        )
    values = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(values.copy())
