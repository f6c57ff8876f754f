import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models train fastest on one thread, and a shared 2-core machine makes
    multi-threaded kernels stall; the previous setting is restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
