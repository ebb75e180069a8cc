"""Suite-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """The tensors in these tests are tiny: one intra-op thread is faster, and on a busy 2-core machine
    several threads can be one to two orders of magnitude slower (OpenMP workers waiting for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
