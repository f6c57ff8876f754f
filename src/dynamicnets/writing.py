"""Writing output files: atomic replacement, the user's umask, one-line errors.

Every file the library writes (checkpoints, run files, JSON results) goes through
`atomic_write_with`: the bytes go to a temporary file in the destination folder, are
flushed and fsync'ed, get the mode a plain `open(path, "w")` would have given (0666 less
the umask), and are renamed over the destination (`os.replace`). A crash at any point
leaves the old file or the new one, never a torn file; the temporary file is removed on
error. Failures of the file system (read-only place, a file where a folder should be, full
disk) become an `OutputError` naming the path.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import OutputError

TEMP_SUFFIX = ".tmp"
"""Temporary files are named `.<final name>.<random>.tmp` in the destination folder."""


def current_umask() -> int:
    """The process's file-mode creation mask (read without changing it where possible).

    Returns:
        the umask, e.g. `0o022`.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: set and restore at once
    os.umask(mask)
    return mask


def describe_os_error(path: str | os.PathLike, err: OSError, doing: str = "cannot write") -> str:
    """One line for an OS error on `path`: `'<path>: cannot write: No space left on device'`.

    Args:
        path: the file or folder concerned.
        err: the error raised by the operating system.
        doing: what failed, e.g. `cannot write` or `cannot create the folder`.

    Returns:
        the message (no trailing period).
    """
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno == errno.ENOSPC:
        reason = "no space left on the device (disk full)"
    elif err.errno in (errno.EROFS,):
        reason = "read-only file system"
    culprit = err.filename if err.filename not in (None, str(path)) else None
    return f"{path}: {doing}: {reason}" + (f" ({culprit})" if culprit else "")


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def ensure_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `folder` (and its parents) unless it exists.

    Args:
        folder: the folder.
        what: what the folder is for, used in the error message (e.g. `run folder`).

    Returns:
        the folder as a `Path`.

    Raises:
        OutputError: naming the folder, when it or one of its parents is a file, or it
            cannot be created (read-only or virtual file system such as `/proc`).
    """
    folder = Path(folder)
    existing = _first_existing(folder)
    if not existing.is_dir():
        if existing == folder:
            article = "an" if what[:1].lower() in "aeiou" else "a"
            raise OutputError(f"{folder}: is a file, expected {article} {what}")
        raise OutputError(f"{folder}: cannot create the {what}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileNotFoundError as err:  # /proc and other virtual file systems
        raise OutputError(f"{folder}: cannot create the {what}: {existing} takes no new folders "
                          f"(a virtual or read-only file system?)") from err
    except OSError as err:
        raise OutputError(describe_os_error(folder, err, f"cannot create the {what}")) from err
    return folder


def check_writable(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check, before any long computation, that `atomic_write_with(path, ...)` can succeed.

    Probes the folder that would hold the file (or its first existing ancestor, when the
    folders are still to be created) by creating and removing a temporary file there;
    nothing else is created.

    Args:
        path: the file to be written later.
        what: the option or key that named it, used in the error (e.g. `--json`).

    Returns:
        `path` as a `Path`.

    Raises:
        OutputError: naming `what` and the path, when the path is a folder, lies under a
            file, or its folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder, expected the path of a file to write")
    existing = _first_existing(path.parent)
    if not existing.is_dir():
        raise OutputError(f"{what} {path}: cannot be written, {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:
        raise OutputError(f"{what} {describe_os_error(path, err)}") from err
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return path


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` atomically with `write(file)`; parent folders are created.

    Args:
        path: the destination.
        write: called once with a binary file object open on the temporary file.

    Returns:
        `path` as a `Path`.

    Raises:
        OutputError: naming the path, when the folder cannot be created or the file cannot
            be written or renamed (the previous file, if any, is left as it was).
    """
    path = Path(path)
    ensure_dir(path.parent, "folder")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:
        raise OutputError(describe_os_error(path, err)) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~current_umask())
        os.replace(tmp_name, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            if isinstance(err, IsADirectoryError) or path.is_dir():
                raise OutputError(f"{path}: is a folder, cannot replace it with a file") from err
            raise OutputError(describe_os_error(path, err)) from err
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Persist a rename in `folder` (best effort; not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """Remove the temporary files a crashed `atomic_write_with` left for `names` in `folder`.

    Only call this while holding the folder's lock: a live writer's temporary file looks
    the same.

    Args:
        folder: the folder.
        names: final file names whose leftovers (`.<name>.*.tmp`) to remove.

    Returns:
        the files removed.
    """
    removed = []
    folder = Path(folder)
    for name in names:
        for leftover in folder.glob(f".{name}.*{TEMP_SUFFIX}"):
            if leftover.is_file() and not leftover.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
                    removed.append(leftover)
    return removed
