import os
import pathlib

import pyro
import pytest
import torch

DATA_DIR = os.environ.get("PYROVAE_DATA_DIR")

# The test models are small: one thread is faster than two that wait on each other, and it keeps
# the suite's time steady on a shared 2-core machine (OpenMP threads spin when a core is busy).
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Extract data sets into a per-session cache (never ~/.cache) and never try to download."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PYROVAE_CACHE_DIR", str(tmp_path_factory.mktemp("pyrovae-cache")))
    mp.setenv("PYROVAE_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts with an empty param store and fixed seeds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def mnist_available() -> bool:
    return bool(DATA_DIR) and (pathlib.Path(DATA_DIR) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()


needs_mnist = pytest.mark.skipif(not mnist_available(), reason="set PYROVAE_DATA_DIR to the folder holding MNIST/raw")
