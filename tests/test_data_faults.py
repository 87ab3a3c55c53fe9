"""Faulty data files and caches, on real files (no mocks): corrupt or truncated sources give one
line naming the file and what to do, and never publish a cache entry; cache entries are keyed on
their source and checked on use; a missing data dir is an error whatever the cache holds; a bad
``subset`` names itself and the split's size.

Corrupt copies are made in ``tmp_path`` from the real files in the data dir. Where a test needs
MNIST-shaped files but not MNIST itself, it writes small idx files of its own (header + bytes,
the format torchvision reads), which keeps it fast and runnable without the data.
"""
import gzip
import json
import os
import shutil
import struct

import numpy as np
import pytest
import torch
from scipy.io import savemat

from pyrovae.data import DataError, DataNotFoundError, load_dataset, load_frey
from pyrovae.data.cache import ENTRIES_FOLDER, ENTRY_KEY, copy_verified, entry_ok, publish
from pyrovae.errors import ConfigError

from conftest import DATA_DIR, needs_frey, needs_mnist

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
REAL_RAW = DATA_DIR / "MNIST" / "raw"


def write_idx(path, array):
    """An idx file of unsigned bytes: ``00 00 08 ndim``, the dims big-endian, the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def write_small_split(raw, prefix, n, fill):
    """``n`` images of value ``fill`` (labels 0..n-1 mod 10) as ``<prefix>-{images,labels}`` idx files."""
    write_idx(raw / f"{prefix}-images-idx3-ubyte", np.full((n, 28, 28), fill))
    write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def small_data_dir(root, n_test=3, fill=7):
    """A data dir whose MNIST/raw holds small unzipped idx files of our own (train: 2 images)."""
    raw = root / "MNIST" / "raw"
    write_small_split(raw, "train", 2, 1)
    write_small_split(raw, "t10k", n_test, fill)
    return root


def real_t10k_data_dir(root):
    """A data dir with the real t10k .gz files (links) and small train files of our own."""
    raw = root / "MNIST" / "raw"
    write_small_split(raw, "train", 2, 1)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).symlink_to(REAL_RAW / name)
    return root


def replace_with_copy(path):
    """Swap the link ``path`` for a writable copy of its target."""
    target = path.resolve()
    path.unlink()
    shutil.copyfile(target, path)


def cache_files(cache):
    """Every file under the cache (entries, keys, temporaries), relative."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def assert_one_line(err, *words):
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert str(word) in message, message


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """An empty extraction cache for this test."""
    monkeypatch.setenv("PYROVAE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- corrupt sources


def truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@needs_mnist
@pytest.mark.parametrize("name, damage", [
    ("t10k-labels-idx1-ubyte.gz", lambda p: truncate(p, -100)),
    ("t10k-images-idx3-ubyte.gz", flip_byte),
], ids=["truncated", "byte-flipped"])
def test_corrupt_gz_publishes_nothing_then_good_source_works(tmp_path, cache, name, damage):
    data = real_t10k_data_dir(tmp_path / "data")
    bad = data / "MNIST" / "raw" / name
    replace_with_copy(bad)
    damage(bad)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", data_dir=data)
    assert_one_line(err, bad, "md5", "replace it")
    entry = name.removesuffix(".gz")
    assert not [f for f in cache_files(cache) if entry in f]  # no entry, no key, no temporary
    bad.unlink()
    bad.symlink_to(REAL_RAW / name)
    assert torch.bincount(load_dataset("mnist", "test", data_dir=data).labels).tolist() == MNIST_TEST_COUNTS


@needs_mnist
def test_truncated_gz_stream_is_a_data_error(tmp_path):
    """A .gz that ends early (what md5 guards against for known files) is caught while gunzipping."""
    src = tmp_path / "t10k-labels-idx1-ubyte.gz"
    shutil.copyfile(REAL_RAW / src.name, src)
    truncate(src, 2000)
    with pytest.raises(DataError) as err:
        copy_verified(src, tmp_path / "out" / "t10k-labels-idx1-ubyte")
    assert_one_line(err, src, "truncated", "replace it")
    assert list((tmp_path / "out").iterdir()) == []


@needs_mnist
@pytest.mark.parametrize("damage, problem", [
    (lambda p: truncate(p, -1), "bytes where its header"),          # one image byte short
    (lambda p: truncate(p, 6), "shorter than its header"),          # cut inside the header
    (lambda p: p.write_bytes(p.read_bytes() + b"\0"), "bytes where its header"),  # padded
    (lambda p: p.write_bytes(b"\0\0\x0d\x01" + p.read_bytes()[4:]), "no idx header"),  # float32 magic
], ids=["one-byte-short", "cut-in-header", "padded", "float-magic"])
def test_bad_unzipped_idx_publishes_nothing(tmp_path, cache, damage, problem):
    data = real_t10k_data_dir(tmp_path / "data")
    raw = data / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    bad = raw / "t10k-labels-idx1-ubyte"
    with gzip.open(REAL_RAW / "t10k-labels-idx1-ubyte.gz") as f:
        bad.write_bytes(f.read())
    damage(bad)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", data_dir=data)
    assert_one_line(err, bad, problem, "replace it")
    assert not [f for f in cache_files(cache) if "t10k-labels" in f]
    with gzip.open(REAL_RAW / "t10k-labels-idx1-ubyte.gz") as f:
        bad.write_bytes(f.read())
    assert torch.bincount(load_dataset("mnist", "test", data_dir=data).labels).tolist() == MNIST_TEST_COUNTS


def test_idx_with_the_wrong_number_of_dimensions(tmp_path, cache):
    data = small_data_dir(tmp_path / "data")
    write_idx(data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros((3, 2)))  # a valid idx2 file
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", data_dir=data)
    assert_one_line(err, data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", "2 dimensions in its header")


def test_images_and_labels_of_different_lengths(tmp_path, cache):
    data = small_data_dir(tmp_path / "data")
    write_idx(data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", data_dir=data)
    assert_one_line(err, data, "3 images but 4 labels")


@needs_frey
@pytest.mark.parametrize("keep", [0, 100, 1000, -1])
def test_truncated_frey_file(tmp_path, keep):
    bad = tmp_path / "FreyFace" / "frey_rawface.mat"
    bad.parent.mkdir()
    shutil.copyfile(DATA_DIR / "FreyFace" / "frey_rawface.mat", bad)
    truncate(bad, keep)
    with pytest.raises(DataError) as err:
        load_dataset("frey", data_dir=tmp_path)
    assert_one_line(err, bad, "replace it")


@pytest.mark.parametrize("ff", [np.zeros((560, 10), np.uint8), np.full((560, 1965), 300.0), np.full((560, 1965), 0.5)],
                         ids=["shape", "above-255", "fractions"])
def test_frey_file_with_the_wrong_array(tmp_path, ff):
    bad = tmp_path / "FreyFace" / "frey_rawface.mat"
    bad.parent.mkdir()
    savemat(bad, {"ff": ff})
    with pytest.raises(DataError) as err:
        load_frey(tmp_path)
    assert_one_line(err, bad, "[560, 1965]", "replace it")


def test_frey_file_of_whole_values_is_accepted(tmp_path):
    good = tmp_path / "FreyFace" / "frey_rawface.mat"
    good.parent.mkdir()
    ff = np.arange(560 * 1965).reshape(560, 1965) % 256  # int64, whole values in 0..255
    savemat(good, {"ff": ff})
    faces = load_frey(tmp_path)
    assert faces.shape == (1965, 28, 20)
    assert torch.equal(faces[5].flatten() * 255, torch.from_numpy(ff[:, 5]).float())


# ----------------------------------------------------------------------------- cache keyed on its source


def test_changed_source_is_read_again(tmp_path, cache):
    data = small_data_dir(tmp_path / "data", n_test=3, fill=7)
    first = load_dataset("mnist", "test", data_dir=data)
    assert len(first) == 3 and first.x.max() == 7 / 255
    before = {f: (cache / f).stat().st_mtime_ns for f in cache_files(cache)}
    assert len(load_dataset("mnist", "test", data_dir=data)) == 3
    assert {f: (cache / f).stat().st_mtime_ns for f in cache_files(cache)} == before  # reused, not rebuilt

    write_small_split(data / "MNIST" / "raw", "t10k", 5, 9)  # another size
    again = load_dataset("mnist", "test", data_dir=data)
    assert len(again) == 5 and again.x.max() == 9 / 255

    images = data / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    mtime = images.stat().st_mtime_ns
    write_idx(images, np.full((5, 28, 28), 11))  # the same size, another modification time
    os.utime(images, ns=(mtime + 10**9, mtime + 10**9))
    assert load_dataset("mnist", "test", data_dir=data).x.max() == 11 / 255

    other = small_data_dir(tmp_path / "other", n_test=5, fill=13)  # another data dir: same names, sizes, times
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        st = (data / "MNIST" / "raw" / name).stat()
        os.utime(other / "MNIST" / "raw" / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_dataset("mnist", "test", data_dir=other).x.max() == 13 / 255
    assert load_dataset("mnist", "test", data_dir=data).x.max() == 11 / 255


def test_bad_new_source_publishes_no_entry(tmp_path, cache):
    data = small_data_dir(tmp_path / "data")
    load_dataset("mnist", "test", data_dir=data)
    before = cache_files(cache)
    bad = data / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    truncate(bad, -1)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", data_dir=data)
    assert_one_line(err, bad, "replace it")
    assert cache_files(cache) == before  # no entry of the bad source, no staging folder left


def only_entry(cache):
    entries = [p for p in (cache / ENTRIES_FOLDER).iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1, entries
    return entries[0]


@pytest.mark.parametrize("damage", [
    lambda entry, key: truncate(entry, -28),
    lambda entry, key: entry.write_bytes(b""),
    lambda entry, key: key.unlink(),
    lambda entry, key: key.write_text("{not json"),
], ids=["entry-truncated", "entry-empty", "key-missing", "key-garbled"])
def test_damaged_cache_entry_is_rebuilt(tmp_path, cache, damage):
    data = small_data_dir(tmp_path / "data", n_test=3, fill=7)
    load_dataset("mnist", "test", data_dir=data)
    folder = only_entry(cache)
    entry, key = folder / "MNIST" / "raw" / "t10k-images-idx3-ubyte", folder / ENTRY_KEY
    size, mtime = entry.stat().st_size, entry.stat().st_mtime_ns
    damage(entry, key)
    os.utime(entry, ns=(mtime - 10**9, mtime - 10**9))  # so a rebuild shows in the modification time
    again = load_dataset("mnist", "test", data_dir=data)
    assert again.x.shape == (3, 28, 28) and bool((again.x == 7 / 255).all())
    assert only_entry(cache) == folder
    assert entry.stat().st_size == size and entry.stat().st_mtime_ns != mtime - 10**9 and key.exists()


def test_two_data_dirs_sharing_one_cache_each_get_their_own_data(tmp_path, cache):
    """Each set of sources has its own keyed entry, never rewritten: loads from two data dirs,
    interleaved, each read their own images and labels (the entry of one is not the other's)."""
    a = small_data_dir(tmp_path / "a", n_test=3, fill=7)
    b = small_data_dir(tmp_path / "b", n_test=4, fill=9)
    write_idx(b / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.full(4, 5))
    for _ in range(2):
        x_a, x_b = load_dataset("mnist", "test", data_dir=a), load_dataset("mnist", "test", data_dir=b)
        assert bool((x_a.x == 7 / 255).all()) and x_a.labels.tolist() == [0, 1, 2]
        assert bool((x_b.x == 9 / 255).all()) and x_b.labels.tolist() == [5, 5, 5, 5]
    assert len([p for p in (cache / ENTRIES_FOLDER).iterdir()]) == 2


def test_an_entry_is_published_whole_once(tmp_path, cache):
    """The mechanism that keeps concurrent loads apart, step by step: while one process builds an
    entry (a staging folder), the entry's path does not exist, so no reader sees part of it; the
    first complete folder renamed to it wins, and a second publisher of the same sources leaves the
    published entry as it is (its staging folder is not renamed over it)."""
    data = small_data_dir(tmp_path / "data", n_test=3, fill=7)
    load_dataset("mnist", "test", data_dir=data)
    entry = only_entry(cache)
    key = json.loads((entry / ENTRY_KEY).read_text())
    assert entry_ok(entry, key)
    staging = cache / ENTRIES_FOLDER / ".late.staging"
    shutil.copytree(entry, staging)
    write_idx(staging / "MNIST" / "raw" / "t10k-images-idx3-ubyte", np.full((3, 28, 28), 200))
    assert publish(staging, entry) is False  # the entry was there first: kept as it was
    assert staging.is_dir() and bool((load_dataset("mnist", "test", data_dir=data).x == 7 / 255).all())
    moved = cache / ENTRIES_FOLDER / "fresh"
    assert publish(staging, moved) is True and not staging.exists() and moved.is_dir()


# ----------------------------------------------------------------------------- the data dir


def test_missing_data_dir_is_an_error_even_with_a_warm_cache(tmp_path, cache):
    data = small_data_dir(tmp_path / "data")
    load_dataset("mnist", "test", data_dir=data)
    gone = tmp_path / "no-such-dir"
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", "test", data_dir=gone)
    assert_one_line(err, gone, "does not exist", "PYROVAE_DATA_DIR", "--data-dir")
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("frey", "test", data_dir=gone)
    assert_one_line(err, gone, "does not exist")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(DataNotFoundError, match="is not a directory"):
        load_dataset("mnist", "test", data_dir=not_a_dir)
    assert len(load_dataset("ppca", data_dir=gone)) == 5000  # synthetic sets need none


def test_source_removed_from_the_data_dir(tmp_path, cache):
    """An entry whose source is gone is not served (offline: an error naming the files)."""
    data = small_data_dir(tmp_path / "data")
    load_dataset("mnist", "test", data_dir=data)
    (data / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", "test", data_dir=data)
    assert_one_line(err, data, "MNIST/raw/t10k-images-idx3-ubyte.gz", "PYROVAE_OFFLINE")


def test_unkeyed_entries_are_used_when_the_data_dir_lacks_the_files(tmp_path, cache):
    """What torchvision downloads into the cache has no key: used when the data dir has no source,
    and only while it passes the idx check."""
    small_data_dir(cache)  # as a download leaves them: cache/MNIST/raw/<files>, no keys
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_dataset("mnist", "test", data_dir=empty).x.shape == (3, 28, 28)
    truncate(cache / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", -1)
    with pytest.raises(DataNotFoundError, match="PYROVAE_OFFLINE"):
        load_dataset("mnist", "test", data_dir=empty)
    assert not (cache / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()


# ----------------------------------------------------------------------------- subset


@pytest.mark.parametrize("split, size", [("train", 5000), ("test", 1000)])
def test_subset_larger_than_the_split(split, size):
    with pytest.raises(ConfigError) as err:
        load_dataset("ppca", split, subset=size + 1)
    assert_one_line(err, "subset", size + 1, f"{split} split", f"({size} examples)",
                    "data.test_subset" if split == "test" else "data.subset")
    assert len(load_dataset("ppca", split, subset=size)) == size
    assert len(load_dataset("ppca", split, subset=np.int64(7))) == 7


def test_subset_larger_than_a_file_backed_split(tmp_path, cache):
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist", "test", data_dir=small_data_dir(tmp_path / "data"), subset=4)
    assert_one_line(err, "subset=4", "(3 examples)")


@pytest.mark.parametrize("subset", [2.5, 2.0, "10", True, None])
def test_subset_must_be_an_integer(subset):
    with pytest.raises(ConfigError) as err:
        load_dataset("ppca", subset=subset)
    assert_one_line(err, "subset must be an integer", repr(subset))


# ----------------------------------------------------------------------------- files changed while read


@pytest.mark.parametrize("workers", [0, 1])
def test_npy_cut_while_streaming_names_the_file(tmp_path, workers):
    """A memory-mapped .npy truncated after loading: reading its lost pages would be a bus error
    (no message at all, or a worker's "out of shared memory"); instead one line naming the file."""
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (3000, 64), dtype=np.uint8))
    split = load_dataset("arrays", "train", path=str(path), in_memory=False, workers=workers)
    assert sum(len(b) for b in split.batches(500, epoch=0)) == len(split)
    truncate(path, 4096)
    with pytest.raises(DataError) as err:
        sum(len(b) for b in split.batches(500, epoch=1))
    assert_one_line(err, f"array file {path} was cut while being read (4096 bytes, its array needs", "restore it")
