import os

import pytest
import torch

# keep tests fast and deterministic on 2 CPU cores
torch.set_num_threads(int(os.environ.get("SEGZOO_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
