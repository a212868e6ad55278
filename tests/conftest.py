import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Test tensors are small: extra OpenMP threads only add synchronisation, which on a
    shared 2-core machine costs far more than it gains. Subprocesses keep the default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
