import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored after: these tiny convolutions only lose from
    intra-op threads, badly so on a shared machine (OpenMP workers spin while other processes
    hold the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
