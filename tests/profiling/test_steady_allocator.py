"""Timing keeps freed memory in the process: a freed batch buffer is reused without
page-faulting it back in (glibc), and benchmark metadata says which allocator setting ran."""
import platform
import resource

import pytest
import torch

from dynamicnets.profiling import measure, run_metadata
from dynamicnets.profiling.allocator import allocator_setting, keep_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"


def faults_per_cycle(cycles: int = 10) -> float:
    """Minor page faults per cycle of two 16 MiB tensors allocated, written and freed (the
    pattern of a forward's activations: with glibc's defaults, once its dynamic mmap
    threshold has risen to 16 MiB, freeing both leaves enough free at the top of the heap
    to trim it, and every cycle faults all 8192 pages back in)."""
    def cycle() -> None:
        first, second = torch.empty(2 ** 22).fill_(1.0), torch.empty(2 ** 22).fill_(1.0)
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
    assert said.startswith("glibc") and "mmap threshold 32 MiB" in said and "trim threshold 2 GiB" in said
    assert keep_freed_memory() == said  # once per process
    assert faults_per_cycle() < 8192 / 10


def test_timing_applies_it_and_the_metadata_records_it():
    measure(lambda: None, min_run_time=0.01, warmup=0)
    assert allocator_setting() == keep_freed_memory()
    assert run_metadata()["allocator"] == keep_freed_memory()
