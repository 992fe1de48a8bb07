"""Shared test set-up.

OpenMP threads that spin while waiting make a 2-core machine crawl as soon as a second
process (a notebook kernel, a DDP peer) wants a core: make them sleep instead. This must be
set before torch is first imported, hence here.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def gen():
    """A fresh seeded CPU generator."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that changes torch's thread count must not change the tests after it (results
    that must be bitwise equal depend on the summation order, hence on the thread count)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
