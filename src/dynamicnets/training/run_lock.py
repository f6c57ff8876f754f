"""One writer per run folder: an exclusive lock file holding the owner's process id.

`RunLock(run_dir).acquire()` creates `<run_dir>/.lock`, takes an exclusive `flock` on it
(released by the kernel when the process ends, however it ends) and writes
`pid <pid> host <host>` into it. A second trainer on the same folder finds the lock held
and gets a `RunFolderBusy` error naming the folder and the owner's pid. A lock file left
by a process that died (no `flock` on it any more) is stale: it is taken over, and
`acquire` reports the dead owner so the caller can say so. Where `flock` is not
available, the pid in the file decides (alive on this host -> busy).
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

from ..errors import DynamicNetsError, OutputError
from ..writing import current_umask, describe_os_error, ensure_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None

LOCK_NAME = ".lock"


class RunFolderBusy(DynamicNetsError):
    """Another live process is writing into the run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


def _parse_owner(text: str) -> tuple[int | None, str | None]:
    """`"pid 123 host box"` -> `(123, "box")`; unreadable parts are None."""
    words = text.split()
    pid = host = None
    for key, value in zip(words[::2], words[1::2]):
        if key == "pid" and value.isdigit():
            pid = int(value)
        elif key == "host":
            host = value
    return pid, host


class RunLock:
    """Exclusive lock on a run folder (context manager).

    Args:
        run_dir: the run folder; created when missing.

    Attributes:
        path: the lock file, `<run_dir>/.lock`.
        stale_owner: after `acquire`, the pid a stale lock file named (its process had
            died), else None.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.stale_owner: int | None = None
        self._fd: int | None = None
        self._created_dir = False

    def acquire(self) -> "RunLock":
        """Take the lock.

        Returns:
            self.

        Raises:
            RunFolderBusy: another live process holds it (its pid is named).
            OutputError: the folder or the lock file cannot be created.
        """
        self._created_dir = not os.path.lexists(self.run_dir)
        ensure_dir(self.run_dir, "run folder")
        for _ in range(10):  # retry when the file was replaced between open and lock
            fd = self._open()
            try:
                previous = self._lock_or_raise(fd)
                if not self._still_the_file(fd):
                    os.close(fd)
                    continue
                self._write_owner(fd)
            except BaseException:
                os.close(fd)
                self._remove_if_created_and_empty()
                raise
            pid, host = _parse_owner(previous)
            self.stale_owner = pid if pid is not None and pid != os.getpid() else None
            self._fd = fd
            return self
        raise RunFolderBusy(f"{self.run_dir}: could not take the lock {self.path} (it keeps changing)")

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent); a run folder that `acquire`
        created and nothing was written into is removed too."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if self._still_the_file(self._fd):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None
        self._remove_if_created_and_empty()

    def _remove_if_created_and_empty(self) -> None:
        if self._created_dir:
            with contextlib.suppress(OSError):  # not empty, or gone: leave it
                self.run_dir.rmdir()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -------------------------------------------------------------- internals
    def _open(self) -> int:
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a folder, expected the run folder's lock file")
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        except OSError as err:
            raise OutputError(describe_os_error(self.path, err, "cannot create the lock file")) from err

    def _lock_or_raise(self, fd: int) -> str:
        """Lock `fd`; returns what the file held before (the previous owner's line)."""
        previous = self._read(fd)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise OutputError(describe_os_error(self.path, err, "cannot lock")) from err
                self._raise_busy(self._read(fd) or previous)
            return self._read(fd)
        pid, host = _parse_owner(previous)  # no flock: trust the pid on this host
        if pid is not None and pid != os.getpid() and host == socket.gethostname() and _pid_alive(pid):
            self._raise_busy(previous)
        return previous

    def _raise_busy(self, owner: str) -> None:
        pid, host = _parse_owner(owner)
        who = f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "") \
            if pid is not None else "another process"
        raise RunFolderBusy(
            f"{self.run_dir}: in use by {who} (lock file {self.path}); one training run writes into a "
            f"run folder at a time: wait for it to finish, or use another name"
        )

    def _still_the_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (on_disk.st_ino, on_disk.st_dev) == (mine.st_ino, mine.st_dev)

    @staticmethod
    def _read(fd: int) -> str:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, 256).decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _write_owner(self, fd: int) -> None:
        line = f"pid {os.getpid()} host {socket.gethostname()}\n".encode()
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, line)
        except OSError as err:
            raise OutputError(describe_os_error(self.path, err, "cannot write the lock file")) from err
