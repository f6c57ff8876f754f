"""Checks and openers for the files a data set is read from.

Every failure raises :class:`~dynamicnets.errors.DataError` naming the path and what was
expected, so that a user pointing a spec at the wrong folder learns what to fix.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from ..errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"


def require_dir(path: str | Path, expected: str) -> Path:
    """Check that ``path`` is an existing, non-empty directory.

    Args:
        path: the directory.
        expected: what the directory should hold, used in the error message
            (e.g. ``"data_batch_1..5 of cifar-10-batches-py"``).

    Returns:
        the path as a :class:`~pathlib.Path` (user ``~`` expanded).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"directory '{path}' does not exist; expected a folder with {expected}")
    if not path.is_dir():
        raise DataError(f"'{path}' is a file, not a directory; expected a folder with {expected}")
    if not any(path.iterdir()):
        raise DataError(f"directory '{path}' is empty; expected {expected}")
    return path


def find_file(directory: Path, names: list[str], *, required: bool = True) -> Path | None:
    """Return the first of ``names`` that exists in ``directory``.

    Args:
        directory: the folder to look in.
        names: candidate file names in order of preference (e.g. plain before ``.gz``).
        required: when no candidate exists, raise (True) or return ``None`` (False).

    Returns:
        the path of the file found, or ``None``.
    """
    for name in names:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    if required:
        wanted = " or ".join(f"'{n}'" for n in names)
        raise DataError(f"missing file {wanted} in directory '{directory}'")
    return None


def read_bytes(path: Path) -> bytes:
    """Read a whole file, decompressing it when it is gzipped (detected by its magic bytes).

    Returns:
        the (decompressed) content.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read '{path}': {err}") from err
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"'{path}' is a truncated or corrupt gzip file: {err}") from err
