"""Shared fixtures and markers.

Markers (declared in pyproject.toml; ``--strict-markers`` refuses any other):

``mnist``  the test reads the real MNIST files. Decorate it with :func:`needs_mnist` (or put
           ``MNIST_MARKS`` in a ``pytest.param``/``pytestmark``): it is marked and skips, with the
           reason, when the files are not there. A test that is *not* marked sees a data folder
           without MNIST (:func:`no_mnist_unless_marked`), so a missing mark fails loudly instead of
           passing here and erroring where the data are absent; a fixture that reads MNIST is named
           ``mnist_*`` and only marked tests may use one.
``slow``   more than about a second. ``pytest -m "not slow"`` is the quick loop; ``make test``
           (``pytest tests``) runs everything.
"""
from pathlib import Path

import pyro
import pytest
import torch

from pyrovae.data import resolve_data_dir

#: the raw data folder as pyrovae resolves it: $PYROVAE_DATA_DIR, else ~/.cache/pyrovae.
DATA_DIR = resolve_data_dir()
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]

# The test models are small: one thread is faster than two that wait on each other, and it keeps
# the suite's time steady on a shared 2-core machine (OpenMP threads spin when a core is busy).
torch.set_num_threads(1)


def missing_mnist_files(data_dir: Path = DATA_DIR) -> list:
    """The MNIST/raw files (``.gz``, or the same unzipped) that ``data_dir`` lacks."""
    raw = Path(data_dir) / "MNIST" / "raw"
    return [f"MNIST/raw/{name}.gz" for name in MNIST_FILES
            if not (raw / f"{name}.gz").exists() and not (raw / name).exists()]


def mnist_available() -> bool:
    return not missing_mnist_files()


_missing = missing_mnist_files()
MNIST_SKIP_REASON = (
    f"needs the real MNIST files: set PYROVAE_DATA_DIR to the folder holding MNIST/raw/ (the four "
    f"*-ubyte.gz files); {DATA_DIR} lacks {_missing[0] if _missing else 'none'}"
    + (f" and {len(_missing) - 1} more" if len(_missing) > 1 else ""))

#: the marks of a test that reads MNIST: ``mnist``, and a skip with the reason when it is missing.
MNIST_MARKS = [pytest.mark.mnist, pytest.mark.skipif(not mnist_available(), reason=MNIST_SKIP_REASON)]


def needs_mnist(test):
    """Mark ``test`` as reading the real MNIST files (``mnist``); skip it, saying why, without them."""
    for mark in MNIST_MARKS:
        test = mark(test)
    return test


def frey_available() -> bool:
    return (DATA_DIR / "FreyFace" / "frey_rawface.mat").exists()


needs_frey = pytest.mark.skipif(
    not frey_available(),
    reason=f"needs the Frey Face file: set PYROVAE_DATA_DIR to the folder holding FreyFace/frey_rawface.mat "
           f"({DATA_DIR} lacks it)")


def png_pixels(path):
    """The pixels ``[height, width, channels]`` of the PNG at ``path``, checked to be a PNG that is not
    one flat colour (a figure with nothing drawn)."""
    import matplotlib.image

    path = Path(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = matplotlib.image.imread(path)
    assert pixels[..., :3].std() > 0.05, path
    return pixels


def pytest_collection_modifyitems(items):
    """A test that uses an ``mnist_*`` fixture must be marked ``mnist`` (see :func:`needs_mnist`)."""
    unmarked = [f"{item.nodeid} (uses {', '.join(n for n in item.fixturenames if n.startswith('mnist'))})"
                for item in items
                if item.get_closest_marker("mnist") is None and any(n.startswith("mnist") for n in item.fixturenames)]
    if unmarked:
        raise pytest.UsageError("tests that read MNIST through a fixture but are not marked mnist "
                                "(decorate them with conftest.needs_mnist):\n  " + "\n  ".join(unmarked))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Extract data sets into a per-session cache (never ~/.cache) and never try to download."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PYROVAE_CACHE_DIR", str(tmp_path_factory.mktemp("pyrovae-cache")))
    mp.setenv("PYROVAE_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def data_dir_without_mnist(tmp_path_factory):
    """A data folder that links every entry of DATA_DIR but MNIST, and an empty extraction cache."""
    root = tmp_path_factory.mktemp("not-marked-mnist")  # the name shows in a DataNotFoundError
    (root / "data").mkdir()
    if DATA_DIR.is_dir():
        for entry in DATA_DIR.iterdir():
            if entry.name != "MNIST":
                (root / "data" / entry.name).symlink_to(entry.resolve())
    (root / "cache").mkdir()
    return root / "data", root / "cache"


@pytest.fixture(autouse=True)
def no_mnist_unless_marked(request, data_dir_without_mnist):
    """Tests not marked ``mnist`` cannot read MNIST (here or in a subprocess): their data folder and
    extraction cache hold no MNIST, so an unmarked read fails here rather than where MNIST is absent.
    (Its own MonkeyPatch: a test's ``monkeypatch.undo()`` leaves it in place.)"""
    with pytest.MonkeyPatch.context() as mp:
        if request.node.get_closest_marker("mnist") is None:
            data, cache = data_dir_without_mnist
            mp.setenv("PYROVAE_DATA_DIR", str(data))
            mp.setenv("PYROVAE_CACHE_DIR", str(cache))
        yield


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts with an empty param store and fixed seeds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
