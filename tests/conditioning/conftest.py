import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These models are tiny: extra intra-op threads only spin against other processes on a shared CPU
    (a 2-thread run measured 20x slower than 1 thread under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
