"""A steady heap for timing: freed memory stays in the process instead of going back to the OS.

glibc's `malloc` serves large blocks with `mmap` and gives them back with `munmap` on
free, and trims the top of its heap whenever enough is free. A CPU forward at batch 256
frees and re-requests activations of several MiB per layer, so whether a call page-faults
its buffers back in depends on the sizes requested before it: the same ResNet block on a
`(N, 16, 32, 32)` batch took either ~70 or ~150 us per sample (with ~14k minor page
faults per call), switching with `N` and from one run to the next. Timings of a dynamic
model, whose blocks see varying sub-batches, against a static one then differ by that
noise, in either direction.

`keep_freed_memory()` turns glibc's use of `mmap` for large blocks off (`M_MMAP_MAX` 0, so
blocks of every size, also those above the largest mmap threshold of 32 MiB, come from the
heap), fixes the mmap threshold (no dynamic adjustment) and sets the trim threshold to
2 GiB (its largest), the documented tuning knobs of `mallopt(3)`: freed blocks are reused
inside the process. It is what the `MALLOC_MMAP_MAX_` / `MALLOC_MMAP_THRESHOLD_` /
`MALLOC_TRIM_THRESHOLD_` environment variables do, applied at run time. It changes the
whole process and cannot be undone, which is why it is a function to call, once, by a
program that times (the timing functions of `dynamicnets.profiling.latency` call it).
The cost: the process keeps its peak heap resident. Training speed is unaffected
(measured: ResNet-20/56 steps at batch 128 took the same time either way).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
"""glibc's largest accepted mmap threshold on 64-bit (`4 * 1024 * 1024 * sizeof(long)`)."""
_TRIM_THRESHOLD = 2 ** 31 - 1
"""The largest trim threshold `mallopt` takes (an `int`): 2 GiB must be free at the top."""


@functools.cache
def keep_freed_memory() -> str:
    """Keep freed heap memory in the process (glibc only; elsewhere nothing changes).

    Idempotent: later calls return the first call's answer without touching the allocator.

    Returns:
        what was done, in words (for a benchmark record), e.g. `"glibc 2.36: no mmap
        blocks, mmap threshold 32 MiB, trim threshold 2 GiB"`, or why nothing was (`"not glibc: ..."`).
    """
    name, version = platform.libc_ver()
    if name != "glibc":
        return f"not glibc ({name or 'unknown C library'}): allocator left as it is"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return f"glibc {version} without mallopt: allocator left as it is"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = []
    if mallopt(_M_MMAP_MAX, 0) == 1:
        done.append("no mmap blocks")
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1:
        done.append(f"mmap threshold {MMAP_THRESHOLD_MAX // 2 ** 20} MiB")
    if mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1:
        done.append("trim threshold 2 GiB")
    return f"glibc {version}: " + (", ".join(done) if done else "mallopt refused every setting")


def allocator_setting() -> str:
    """What `keep_freed_memory()` did in this process, or that the allocator has its defaults
    (for a benchmark's metadata; calls nothing that changes the allocator)."""
    if keep_freed_memory.cache_info().currsize:
        return keep_freed_memory()
    return "C library defaults"
