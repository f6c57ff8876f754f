"""Timing keeps freed memory in the process: a freed batch buffer is reused without
page-faulting it back in (glibc), and benchmark metadata says which allocator setting ran."""
import platform
import resource

import pytest
import torch

from dynamicnets.profiling import measure, run_metadata
from dynamicnets.profiling.allocator import allocator_setting, keep_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"


def faults_per_cycle(mib: int, cycles: int = 10) -> float:
    """Minor page faults per cycle of two `mib` MiB tensors allocated, written and freed (the
    pattern of a forward's activations: with glibc's defaults, blocks above 32 MiB are
    mmapped and unmapped on every cycle, and smaller ones, once the dynamic mmap threshold
    has risen to their size, leave enough free at the top of the heap to trim it: either
    way every cycle faults all its pages back in)."""
    def cycle() -> None:
        first, second = torch.empty(mib * 2 ** 18).fill_(1.0), torch.empty(mib * 2 ** 18).fill_(1.0)
        del first, second

    for _ in range(3):
        cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        cycle()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / cycles


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's mallopt")
def test_a_freed_buffer_is_reused_without_page_faults():
    said = keep_freed_memory()
    for setting in ("no mmap blocks", "mmap threshold 32 MiB", "trim threshold 2 GiB"):
        assert setting in said
    assert said.startswith("glibc") and keep_freed_memory() == said  # once per process
    for mib in (16, 64):  # below and above the largest mmap threshold
        assert faults_per_cycle(mib) < 2 * mib * 256 / 10, mib


def test_timing_applies_it_and_the_metadata_records_it():
    measure(lambda: None, min_run_time=0.01, warmup=0)
    assert allocator_setting() == keep_freed_memory()
    assert run_metadata()["allocator"] == keep_freed_memory()
