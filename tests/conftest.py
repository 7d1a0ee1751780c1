import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*RoPE scaling factor.*")


def pytest_configure(config):
    import torch

    # Tiny models: one thread is faster than two fighting the worker processes the service tests start.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    import torch

    torch.manual_seed(0)
    yield
