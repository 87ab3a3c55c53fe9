"""Tests of pyrovae.data on the real files in $PYROVAE_DATA_DIR (no mocks).

Extraction goes to a temporary cache per module (PYROVAE_CACHE_DIR), never ~/.cache, and
PYROVAE_OFFLINE=1 keeps torchvision from trying to download.  Statistical checks use
deterministic seeds; their tolerances are stated where they are made.
"""

import gzip
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pyrovae.data import (
    DATASETS,
    DataError,
    DataNotFoundError,
    DataSplit,
    cache_dir,
    frey_split_indices,
    load_dataset,
    load_frey,
    load_splits,
    ppca_data,
    resolve_data_dir,
    toy_data,
)

from conftest import DATA_DIR, MNIST_FILES, needs_frey, needs_mnist

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
N_SE = 5  # statistical checks: |estimate - truth| <= 5 standard errors


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """One extraction cache for the module; offline so that nothing tries the network."""
    cache = tmp_path_factory.mktemp("pyrovae-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYROVAE_CACHE_DIR", str(cache))
        mp.setenv("PYROVAE_OFFLINE", "1")
        yield cache


@pytest.fixture(scope="module")
def mnist_train(module_cache):
    return load_dataset("mnist", "train")


@pytest.fixture(scope="module")
def mnist_static(module_cache):
    return load_dataset("mnist", "train", binarize="static")


def snapshot(folder):
    """{relative path: (size, mtime_ns)} of every file and folder below ``folder``."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(Path(folder).rglob("*"))
    }


def is_binary(x):
    """Only 0s and 1s, and both of them."""
    return bool(((x == 0) | (x == 1)).all()) and x.min() == 0 and x.max() == 1


# ----------------------------------------------------------------------------- locations


def test_resolve_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PYROVAE_DATA_DIR", raising=False)
    assert resolve_data_dir() == tmp_path / ".cache" / "pyrovae"
    monkeypatch.setenv("PYROVAE_DATA_DIR", "/from/env")
    assert resolve_data_dir() == Path("/from/env")
    assert resolve_data_dir("/from/arg") == Path("/from/arg")


def test_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PYROVAE_CACHE_DIR")
    assert cache_dir() == tmp_path / ".cache" / "pyrovae" / "extracted"
    monkeypatch.setenv("PYROVAE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


# ----------------------------------------------------------------------------- MNIST


@needs_mnist
def test_mnist_train_values(mnist_train):
    x, labels = mnist_train.x, mnist_train.labels
    assert x.shape == (60000, 28, 28) and x.dtype == torch.float32
    assert mnist_train.shape == (28, 28) and len(mnist_train) == 60000
    assert x.min() == 0.0 and x.max() == 1.0
    assert labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == MNIST_TRAIN_COUNTS  # label 1: 6742 times
    assert abs(x.mean().item() - 0.1307) < 1e-3


@needs_mnist
def test_mnist_test_values(module_cache):
    test = load_dataset("mnist", "test")
    assert test.x.shape == (10000, 28, 28)
    assert 0.0 <= test.x.min() and test.x.max() <= 1.0
    assert torch.bincount(test.labels).tolist() == MNIST_TEST_COUNTS


@needs_mnist
@needs_frey
def test_data_dir_never_written(monkeypatch, tmp_path):
    monkeypatch.setenv("PYROVAE_CACHE_DIR", str(tmp_path / "cache"))
    before = snapshot(DATA_DIR)
    assert torch.bincount(load_dataset("mnist", "test").labels).tolist() == MNIST_TEST_COUNTS
    assert load_dataset("frey", "test").x.shape == (200, 28, 20)
    assert snapshot(DATA_DIR) == before
    (entry,) = (tmp_path / "cache" / "by-source").iterdir()  # one keyed entry, no staging folder left behind
    assert sorted(p.name for p in (entry / "MNIST" / "raw").iterdir()) == sorted(MNIST_FILES)


@needs_mnist
def test_concurrent_extraction(monkeypatch, tmp_path):
    """Two loaders extracting into one empty cache at once: each builds a staging folder, one is published."""
    monkeypatch.setenv("PYROVAE_CACHE_DIR", str(tmp_path))
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: load_dataset("mnist", "test"), range(2))
    assert torch.equal(a.x, b.x) and torch.bincount(a.labels).tolist() == MNIST_TEST_COUNTS
    (entry,) = (tmp_path / "by-source").iterdir()  # one published entry; the other's staging folder is gone
    assert sorted(p.name for p in (entry / "MNIST" / "raw").iterdir()) == sorted(MNIST_FILES)


@needs_mnist
def test_cache_is_reused(mnist_train, module_cache):
    before = snapshot(module_cache)
    assert torch.bincount(load_dataset("mnist", "test").labels).tolist() == MNIST_TEST_COUNTS
    assert snapshot(module_cache) == before


@needs_mnist
def test_unzipped_files_in_data_dir_are_accepted(monkeypatch, tmp_path, mnist_train, module_cache):
    monkeypatch.setenv("PYROVAE_CACHE_DIR", str(tmp_path))
    (entry,) = (module_cache / "by-source").iterdir()  # holds MNIST/raw/<unzipped idx files>
    train = load_dataset("mnist", "train", data_dir=entry)
    assert torch.equal(train.x, mnist_train.x)


def test_corrupt_gz_is_rejected(monkeypatch, tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        with gzip.open(raw / f"{name}.gz", "wb") as f:
            f.write(b"not mnist")
    monkeypatch.setenv("PYROVAE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="md5"):
        load_dataset("mnist", data_dir=tmp_path / "data")


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_missing_mnist_files_raise(monkeypatch, tmp_path, name, folder):
    monkeypatch.setenv("PYROVAE_CACHE_DIR", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(name, data_dir=empty)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(empty) in message and "PYROVAE_DATA_DIR" in message and "--data-dir" in message
    for file in MNIST_FILES:
        assert f"{folder}/raw/{file}.gz" in message
    assert list(empty.iterdir()) == []


def test_missing_frey_file_raises(tmp_path):
    with pytest.raises(DataNotFoundError, match="FreyFace/frey_rawface.mat") as err:
        load_dataset("frey", data_dir=tmp_path)
    assert str(tmp_path) in str(err.value)


# ----------------------------------------------------------------------------- Frey Face


@needs_frey
def test_frey_split():
    train, test = load_splits("frey")
    assert train.x.shape == (1765, 28, 20) and test.x.shape == (200, 28, 20)
    assert train.labels is None and test.labels is None
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0
    idx_train, idx_test = frey_split_indices("train"), frey_split_indices("test")
    assert torch.equal(idx_train, frey_split_indices("train"))  # deterministic
    assert len(set(idx_train.tolist()) | set(idx_test.tolist())) == 1965  # disjoint, complete
    faces = load_frey(resolve_data_dir())
    assert faces.shape == (1965, 28, 20)
    assert torch.equal(train.x, faces[idx_train]) and torch.equal(test.x, faces[idx_test])


# ----------------------------------------------------------------------------- binarization


@needs_mnist
def test_static_binarization(mnist_static, mnist_train):
    x = mnist_static.x
    assert mnist_static.binarize == "static"
    assert is_binary(x)
    again = load_dataset("mnist", binarize="static", subset=2000)
    assert torch.equal(again.x, x[:2000])  # the same fixed draw on every load
    assert mnist_static.epoch(0) is x and mnist_static.epoch(7) is x
    assert abs(x.mean().item() - mnist_train.x.mean().item()) < 1e-3


def binary_mean_close(binary, grey):
    """Per-pixel mean of 0/1 draws vs the grey mean: within N_SE standard errors of a mean of
    independent Bernoulli(p_i), se = sqrt(sum_i p_i (1 - p_i)) / N."""
    n = grey.shape[0]
    se = (grey * (1 - grey)).sum(0).sqrt() / n
    return bool(((binary.mean(0) - grey.mean(0)).abs() <= N_SE * se + 1e-6).all())


@needs_mnist
def test_dynamic_binarization(mnist_train):
    n = 20000
    dyn = load_dataset("mnist", binarize="dynamic", seed=3, subset=n)
    grey = mnist_train.x[:n]
    assert torch.equal(dyn.x, grey)  # grey levels kept
    e0, e1 = dyn.epoch(0), dyn.epoch(1)
    assert is_binary(e0)
    assert not torch.equal(e0, e1)
    assert torch.equal(e0, dyn.epoch(0))  # a resumed run sees the same epoch
    assert torch.equal(e1, load_dataset("mnist", binarize="dynamic", seed=3, subset=n).epoch(1))
    assert not torch.equal(e0, replace(dyn, seed=4).epoch(0))
    assert binary_mean_close(e0, grey) and binary_mean_close(e1, grey)


@needs_mnist
def test_test_set_binarized_once():
    static = load_dataset("mnist", "test", binarize="static")
    dyn = load_dataset("mnist", "test", binarize="dynamic", seed=5)
    assert dyn.binarize == "static"
    assert torch.equal(dyn.x, static.x) and torch.equal(dyn.epoch(0), dyn.epoch(1))
    assert is_binary(static.x)


# ----------------------------------------------------------------------------- subset


@needs_mnist
def test_subset_is_prefix(mnist_train, mnist_static):
    small = load_dataset("mnist", subset=100)
    assert small.x.shape == (100, 28, 28)
    assert torch.equal(small.x, mnist_train.x[:100])
    assert torch.equal(small.labels, mnist_train.labels[:100])
    assert torch.equal(load_dataset("mnist", binarize="static", subset=50).x, mnist_static.x[:50])


# ----------------------------------------------------------------------------- arguments


def test_bad_binarize_names_the_options():
    with pytest.raises(ValueError) as err:
        load_dataset("ppca", binarize="sometimes")
    for word in ("binarize", "none", "static", "dynamic", "sometimes"):
        assert word in str(err.value)


def test_binarize_real_valued_set_rejected():
    with pytest.raises(ValueError, match="binarize"):
        load_dataset("toy", binarize="static")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load_dataset("cifar")
    assert "cifar" in str(err.value)
    for name in DATASETS:
        assert name in str(err.value)


def test_bad_split_and_subset():
    with pytest.raises(ValueError, match="split"):
        load_dataset("ppca", "valid")
    with pytest.raises(ValueError, match="subset"):
        load_dataset("ppca", subset=-1)


# ----------------------------------------------------------------------------- synthetic


def test_ppca_covariance():
    """Empirical covariance S vs C = W W^T + sigma^2 I: |S_ij - C_ij| <= 5 se, with the
    Gaussian standard error se_ij = sqrt((C_ii C_jj + C_ij^2) / n); the mean within 5 se too."""
    n = 100_000
    x, p = ppca_data(n, latent_dim=2, obs_dim=5, sigma=0.5, seed=0)
    assert x.shape == (n, 5) and x.dtype == torch.float32
    assert p["W"].shape == (5, 2) and p["b"].shape == (5,) and p["sigma"] == 0.5
    c = p["W"] @ p["W"].T + 0.25 * torch.eye(5)
    s = torch.cov(x.T.double()).float()
    se = ((torch.outer(c.diag(), c.diag()) + c**2) / n).sqrt()
    assert ((s - c).abs() <= N_SE * se).all()
    assert ((x.mean(0) - p["b"]).abs() <= N_SE * (c.diag() / n).sqrt()).all()


def test_ppca_seeded():
    x0, p0 = ppca_data(10, seed=0)
    x0b, p0b = ppca_data(10, seed=0)
    x1, p1 = ppca_data(10, seed=1)
    assert torch.equal(x0, x0b) and torch.equal(p0["W"], p0b["W"])
    assert not torch.equal(p0["W"], p1["W"])


def test_toy_moments():
    """x ~ N(mu, z^2), z ~ U(a, b): E(x - mu)^k = E[z^k] E[eps^k], so mean mu, variance
    m2 = (a^2+ab+b^2)/3, m4 = 3 (b^5-a^5) / (5 (b-a)), m8 = 105 (b^9-a^9) / (9 (b-a)).
    Each sample moment within 5 standard errors: sqrt(m2/n), sqrt((m4-m2^2)/n), sqrt((m8-m4^2)/n).
    m4 tells it from one Gaussian of the same variance (3 m2^2 = 9.19 vs m4 = 12.79)."""
    n, a, b, mu = 200_000, 0.5, 2.0, 1.5
    x, p = toy_data(n, a=a, b=b, mu=mu, seed=0)
    assert x.shape == (n, 1) and p == {"a": a, "b": b, "mu": mu}
    m2 = (a * a + a * b + b * b) / 3
    m4 = 3 * (b**5 - a**5) / (5 * (b - a))
    m8 = 105 * (b**9 - a**9) / (9 * (b - a))
    d = x.double() - mu
    assert abs(x.double().mean().item() - mu) <= N_SE * (m2 / n) ** 0.5
    assert abs(d.pow(2).mean().item() - m2) <= N_SE * ((m4 - m2 * m2) / n) ** 0.5
    assert abs(d.pow(4).mean().item() - m4) <= N_SE * ((m8 - m4 * m4) / n) ** 0.5


def test_synthetic_splits_share_the_model():
    train, test = load_splits("ppca", seed=2)
    assert train.x.shape == (5000, 5) and test.x.shape == (1000, 5)
    assert torch.equal(train.params["W"], test.params["W"])
    x, _ = ppca_data(6000, seed=2)
    assert torch.equal(train.x, x[:5000]) and torch.equal(test.x, x[5000:])
    assert load_dataset("toy", "test").x.shape == (1000, 1)


# ----------------------------------------------------------------------------- container


def counting_data(n=103):
    return DataSplit(torch.arange(n, dtype=torch.float32)[:, None], None, "count", seed=7)


def test_batches_cover_every_example_once():
    data = counting_data()
    batches = list(data.batches(10, epoch=0))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert torch.equal(torch.cat(batches).flatten().sort().values, data.x.flatten())


def test_batches_order():
    data = counting_data()
    first = torch.cat(list(data.batches(10, epoch=0)))
    assert torch.equal(first, torch.cat(list(data.batches(10, epoch=0))))  # resumable
    assert not torch.equal(first, torch.cat(list(data.batches(10, epoch=1))))
    assert torch.equal(torch.cat(list(data.batches(10, epoch=0, shuffle=False))), data.x)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(
        torch.cat(list(data.batches(10, epoch=0, generator=g1))),
        torch.cat(list(data.batches(10, epoch=5, generator=g2))),
    )


def test_to_device():
    data = load_dataset("toy", subset=10)
    moved = data.to("cpu")
    assert moved.x.device.type == "cpu" and len(moved) == 10 and moved.shape == (1,)
    if torch.cuda.is_available():
        cuda = data.to("cuda")
        assert cuda.x.is_cuda
        assert next(cuda.batches(4, epoch=0)).is_cuda
