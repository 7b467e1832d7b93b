import os

import pytest
import torch
from hypothesis import settings

# The same examples on every run, so a CI failure is reproducible and never a lucky draw; run with
# --hypothesis-profile=explore to search new examples locally.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=200)
settings.load_profile("default")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker: two workers with two OpenMP threads each on two cores spin against each other
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
