"""A user's own data: image folders, array files, CIFAR-10/SVHN files, and streaming (no mocks).

Every data file is written here: PNGs with PIL, arrays with numpy, CIFAR-10 batches with pickle
in its python format, SVHN with scipy.io.savemat. Values are checked exactly against what was
written (8-bit levels / 255), and a streamed split against the in-memory one (same minibatches,
same ELBOs to float precision).
"""
import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from PIL import Image

import pyrovae
from pyrovae.app import config as cfgmod
from pyrovae.app.cli import main
from pyrovae.data import DataError, DataNotFoundError, DataSplit, StreamingSplit, levels, load_dataset
from pyrovae.errors import ConfigError

RNG = np.random.default_rng(0)


def write_pngs(folder: Path, n: int, size=(28, 28), mode="L", start=0) -> dict:
    """``n`` random images saved as PNG in ``folder``; {path: uint8 pixels [H, W] or [H, W, 3]}."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) + (() if mode == "L" else (3,))
    out = {}
    for i in range(start, start + n):
        pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
        path = folder / f"img{i:03d}.png"
        Image.fromarray(pixels, mode).save(path)
        out[str(path)] = pixels
    return out


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """A folder with class sub-folders cat/ (12 images) and dog/ (8), 28×28 grayscale."""
    root = tmp_path_factory.mktemp("own") / "pets"
    return root, {**write_pngs(root / "cat", 12), **write_pngs(root / "dog", 8, start=12)}


def test_folder_with_class_subfolders(classes):
    root, pixels = classes
    train = load_dataset("folder", "train", path=str(root))
    test = load_dataset("folder", "test", path=str(root))
    assert isinstance(train, DataSplit) and train.x.shape == (18, 28, 28) and test.x.shape == (2, 28, 28)
    assert train.bits == 8 and train.x.dtype == torch.float32
    # the seeded split: torch.randperm(20) with seed 0, the last 2 the test set, stated in the note
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    files = sorted(pixels)                              # ImageFolder's order: cat/ then dog/, sorted
    for split, idx in ((train, perm[:18]), (test, perm[18:])):
        expected = torch.stack([torch.from_numpy(pixels[files[i]]) for i in idx])
        assert torch.equal(levels(split.x, 8), expected)                  # exactly the PNGs' bytes
        assert torch.equal(split.x, expected.float() / 255)
        assert split.labels.tolist() == [int(i >= 12) for i in idx]       # cat 0, dog 1
    assert "seed 0" in train.note and "18 train / 2 test" in train.note


def test_folder_split_seed_and_fraction(classes):
    root, _ = classes
    a = load_dataset("folder", "test", path=str(root), test_fraction=0.25, split_seed=3)
    b = load_dataset("folder", "train", path=str(root), test_fraction=0.25, split_seed=3)
    assert len(a) == 5 and len(b) == 15
    x = torch.cat([a.x, b.x]).flatten(1)
    assert len({tuple(r.tolist()) for r in x}) == 20                      # disjoint, covering


def test_folder_with_its_own_split_rgb_resized(tmp_path):
    write_pngs(tmp_path / "train" / "a", 3, size=(40, 30), mode="RGB")
    write_pngs(tmp_path / "train" / "b", 2, size=(20, 20), mode="RGB")
    write_pngs(tmp_path / "test" / "b", 2, size=(32, 32), mode="RGB")
    train = load_dataset("folder", "train", path=str(tmp_path), image_size=16, binarize="none")
    test = load_dataset("folder", "test", path=str(tmp_path), image_size=16)
    assert train.x.shape == (5, 3, 16, 16) and test.x.shape == (2, 3, 16, 16)
    assert train.labels.tolist() == [0, 0, 0, 1, 1] and test.labels.tolist() == [1, 1]  # b is 1 in both
    assert "its own split, 5 train / 2 test" in test.note
    # resize of the shorter side to 16, then a centre crop, as torchvision does it on the PIL image
    from torchvision.transforms import functional as F
    first = Image.open(sorted((tmp_path / "train" / "a").iterdir())[0])
    assert torch.equal(levels(train.x[0], 8), F.pil_to_tensor(F.center_crop(F.resize(first, 16), 16)))


def test_flat_folder_is_unlabeled_and_mixed_modes_become_rgb(tmp_path):
    write_pngs(tmp_path, 4)
    write_pngs(tmp_path, 1, mode="RGB", start=4)
    (tmp_path / ".DS_Store").write_bytes(b"not an image, hidden: skipped")
    split = load_dataset("folder", "train", path=str(tmp_path), test_fraction=0.2)
    assert split.labels is None and split.x.shape == (4, 3, 28, 28)
    gray = load_dataset("folder", "train", path=str(tmp_path), test_fraction=0.2, channels=1)
    assert gray.x.shape == (4, 28, 28)


def test_arrays_npz_with_labels_and_own_split(tmp_path):
    x_train, x_test = RNG.integers(0, 256, (30, 8, 8), dtype=np.uint8), RNG.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x_train, x_test=x_test, y_train=np.arange(30) % 4, y_test=np.arange(6) % 4)
    train = load_dataset("arrays", "train", path=str(tmp_path / "d.npz"), label_key="y")
    test = load_dataset("arrays", "test", path=str(tmp_path / "d.npz"), label_key="y")
    assert torch.equal(levels(train.x, 8), torch.from_numpy(x_train)) and train.bits == 8
    assert torch.equal(test.x, torch.from_numpy(x_test).float() / 255)
    assert train.labels.tolist() == (np.arange(30) % 4).tolist() and "its own split" in test.note


def test_arrays_npy_floats_and_channels(tmp_path):
    x = RNG.normal(size=(20, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    train = load_dataset("arrays", "train", path=str(tmp_path / "x.npy"))
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    assert train.bits is None and torch.equal(train.x, torch.from_numpy(x)[perm[:18]])
    with pytest.raises(ConfigError, match=r"binarize='dynamic' needs values in \[0, 1\].*x\.npy"):
        load_dataset("arrays", "train", path=str(tmp_path / "x.npy"), binarize="dynamic")
    np.savez(tmp_path / "c.npz", pix=RNG.integers(0, 256, (10, 1, 4, 4), dtype=np.uint8),
             rgb=RNG.integers(0, 256, (10, 3, 4, 4)), flags=RNG.random((10, 6)) > 0.5)
    assert load_dataset("arrays", "train", path=str(tmp_path / "c.npz"), key="pix").x.shape == (9, 4, 4)
    assert load_dataset("arrays", "train", path=str(tmp_path / "c.npz"), key="rgb").x.shape == (9, 3, 4, 4)
    flags = load_dataset("arrays", "train", path=str(tmp_path / "c.npz"), key="flags")
    assert flags.bits == 1 and set(flags.x.unique().tolist()) <= {0.0, 1.0}


def test_hidden_folders_at_any_depth_are_skipped(tmp_path):
    """Copies in ``.ipynb_checkpoints/`` (flat folder) or ``cat/.cache/`` (class folder) are not data."""
    flat = tmp_path / "flat"
    write_pngs(flat, 10)
    write_pngs(flat / ".ipynb_checkpoints", 4)
    assert len(load_dataset("folder", "train", path=str(flat))) + len(load_dataset("folder", "test", path=str(flat))) == 10
    nested = tmp_path / "nested"
    write_pngs(nested / "cat", 3)
    write_pngs(nested / "cat" / ".cache" / "deeper", 2)
    write_pngs(nested / "dog", 3)
    both = [load_dataset("folder", split, path=str(nested)) for split in ("train", "test")]
    assert sum(len(s) for s in both) == 6 and sorted(torch.cat([s.labels for s in both]).tolist()) == [0] * 3 + [1] * 3


def test_fingerprint_of_the_data_and_its_split(tmp_path):
    """The same files give the same fingerprint; an added file, another split seed or other array
    values change it (what a resume checks)."""
    write_pngs(tmp_path / "pets", 10)
    print_of = lambda **kw: load_dataset("folder", "train", path=str(tmp_path / "pets"), **kw).fingerprint  # noqa: E731
    first = print_of()
    assert len(first) == 24 and print_of() == first
    assert print_of(split_seed=1) != first
    write_pngs(tmp_path / "pets", 1, start=10)
    assert print_of() != first
    x = RNG.integers(0, 256, (20, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", x)
    a = load_dataset("arrays", "train", path=str(tmp_path / "a.npy")).fingerprint
    x[0, 0] ^= 1
    np.save(tmp_path / "a.npy", x)
    assert load_dataset("arrays", "train", path=str(tmp_path / "a.npy")).fingerprint != a
    streamed = load_dataset("arrays", "train", path=str(tmp_path / "a.npy"), in_memory=False, workers=0)
    assert streamed.fingerprint == load_dataset("arrays", "train", path=str(tmp_path / "a.npy")).fingerprint


@pytest.mark.slow
def test_resume_on_changed_data_is_refused(tmp_path, capsys):
    root, out = tmp_path / "pets", tmp_path / "run"
    write_pngs(root, 20, size=(8, 8))
    args = ["train", "--out", str(out), "--set", "data.dataset=folder", "--set", f"data.path={root}",
            "--set", "data.binarize=none", "--set", "model.likelihood=continuous-bernoulli"] + TINY
    assert main(args) == 0
    before = (out / "checkpoint.pt").read_bytes()
    write_pngs(root, 5, size=(8, 8), start=20)                          # the split is drawn anew over 25 files
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--resume: the train and test data differ from those" in err
    assert "23 train / 2 test now" in err and "--force" in err
    assert (out / "checkpoint.pt").read_bytes() == before
    for extra in root.glob("img02*.png"):
        extra.unlink()
    assert main(["train", "--out", str(out), "--resume", "--set", "train.epochs=2"]) == 0   # the same data again


# -- bad input: one line naming the path ------------------------------------------------------------
def bad_folder(tmp_path, case):
    root = tmp_path / case
    root.mkdir()
    if case == "not-an-image":
        write_pngs(root, 2)
        (root / "notes.txt").write_text("hello")
        return root, {}, r"file .*notes\.txt is not an image"
    if case == "truncated":
        write_pngs(root, 2)
        png = root / "img000.png"
        png.write_bytes(png.read_bytes()[:60])
        return root, {}, r"image .*img000\.png cannot be decoded"
    if case == "mixed-sizes":
        write_pngs(root, 1)
        write_pngs(root, 1, size=(32, 32), start=1)
        return root, {}, r"holds images of different sizes \(.*img000\.png: 28×28, .*img001\.png: 32×32\): set data.image_size"
    if case == "files-and-folders":
        write_pngs(root, 1)
        write_pngs(root / "cls", 1)
        return root, {}, r"folder .*files-and-folders holds both files"
    if case == "unknown-test-class":
        write_pngs(root / "train" / "a", 2)
        write_pngs(root / "test" / "z", 1)
        return root, {"split": "test"}, r"class folder\(s\) \['z'\] that its train folder lacks"
    if case == "sixteen-bit":
        Image.fromarray(RNG.integers(0, 60000, (8, 8)).astype(np.uint16)).save(root / "deep.png")
        write_pngs(root, 1)
        return root, {}, r"image .*deep\.png has mode 'I;16"
    return root, {}, r"folder .*empty holds no image files"      # "empty"


@pytest.mark.parametrize("case", ["empty", "not-an-image", "truncated", "mixed-sizes", "files-and-folders",
                                  "unknown-test-class", "sixteen-bit"])
def test_bad_folders(tmp_path, case):
    root, kwargs, message = bad_folder(tmp_path, case)
    with pytest.raises(DataError, match=message) as err:
        load_dataset("folder", kwargs.get("split", "train"), path=str(root))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arrays, kwargs, message", [
    ({"x": np.zeros(10, np.uint8)}, {}, r"key 'x' has shape \[10\]: expected \[N, D\]"),
    ({"x": np.zeros((10, 8, 8, 3), np.uint8)}, {}, r"shape \[10, 8, 8, 3\].*channels-last"),
    ({"x": np.zeros((10, 4), np.complex64)}, {}, r"has dtype complex64: expected uint8"),
    ({"x": np.full((10, 4), 300)}, {}, r"holds integers in 300..300: expected 8-bit levels"),
    ({"x": np.full((10, 4), np.nan)}, {}, r"NaN or infinite"),
    ({"x": np.eye(10, 4, dtype=np.uint8)}, {}, r"holds integers in 0..1: as 8-bit levels the model would see k/255 "
                                                r".*store bools \(x.astype\(bool\)\)"),
    ({"x": np.eye(10, 4, dtype=np.int64)}, {}, r"holds integers in 0..1: .*store floats in \[0, 1\]"),
    ({"x": np.zeros((10, 4), np.uint8), "y": np.zeros(9, int)}, {"label_key": "y"},
     r"key 'y': expected 10 integer labels .* got int64 of shape \[9\]"),
    ({"x": np.zeros((10, 4), np.uint8), "y": np.zeros(10)}, {"label_key": "y"}, r"integer labels.*got float64"),
    ({"images": np.zeros((10, 4), np.uint8)}, {}, r"holds no array 'x' .*its keys are \['images'\]; set data.key"),
    ({"x": np.array([{"a": 1}] * 10, dtype=object)}, {}, r"cannot be read without unpickling"),
])
def test_bad_arrays(tmp_path, arrays, kwargs, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_dataset("arrays", "train", path=str(tmp_path / "bad.npz"), **kwargs)
    assert str(tmp_path / "bad.npz") in str(err.value) and "\n" not in str(err.value)


def test_bad_paths_and_options(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"data.path .*nowhere does not exist: expected a folder"):
        load_dataset("folder", "train", path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"data.path must name the file"):
        load_dataset("arrays", "train")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"x\.csv is not an \.npz or \.npy file"):
        load_dataset("arrays", "train", path=str(tmp_path / "x.csv"))
    with pytest.raises(ConfigError, match=r"data.path is read by data set\(s\) 'arrays', 'folder'; 'toy' does not"):
        load_dataset("toy", "train", path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"data.in_memory must be one of 'auto', 'on', 'off'; got 'yes'"):
        cfgmod.load(overrides=["data.in_memory='yes'"])
    with pytest.raises(ConfigError, match=r"data.channels must be one of 0, 1, 3; got 2"):
        cfgmod.load(overrides=["data.channels=2"])
    assert cfgmod.load(overrides=["data.path=some/dir"])["data"]["path"] == str(Path("some/dir").absolute())


# -- CIFAR-10 and SVHN files --------------------------------------------------------------------------
def write_cifar(data_dir: Path, n: int = 4) -> dict:
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = RNG.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in RNG.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": x, b"filenames": [b"a.png"] * n}, f,
                        protocol=2)
        written[name] = (x, y)
    return written


def test_cifar10_from_its_python_batches(tmp_path):
    written = write_cifar(tmp_path)
    train = load_dataset("cifar10", "train", data_dir=tmp_path, in_memory=True)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    x = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert train.x.shape == (20, 3, 32, 32) and torch.equal(levels(train.x, 8), torch.from_numpy(x))
    assert test.labels.tolist() == written["test_batch"][1] and train.bits == 8


class Boom:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_cifar10_batches_are_never_unpickled_as_objects(tmp_path):
    write_cifar(tmp_path)
    boom, target = Boom(), tmp_path / "pwned"
    boom.target = str(target)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": boom, b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 python batch .*names .* which is not a numpy array part"):
        load_dataset("cifar10", "train", data_dir=tmp_path)
    assert not target.exists()


class HugeArray:
    """Pickles as an array that declares 10^9 CIFAR rows (3 TB), built by ``how`` (only allowed globals)."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        shape = (10**9, 3072)
        if self.how == "reconstruct":
            return np.ndarray.__reduce__(np.zeros(0, np.uint8))[0], (np.ndarray, shape, b"B")
        return np.ndarray, (shape, "u1")


@pytest.mark.parametrize("how", ["reconstruct", "ndarray"])
def test_cifar10_batch_declaring_a_huge_array_is_refused_before_allocating(tmp_path, how):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": HugeArray(how), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match=r"test_batch is not a CIFAR-10 python batch \(UnpicklingError: it declares "
                                        r"an array of shape \[1000000000, 3072\] \(3072000000000 bytes\), more than "
                                        r"the file's \d+ bytes\)") as err:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_svhn_from_its_mat_files_and_missing_files(tmp_path):
    from scipy.io import savemat

    (tmp_path / "SVHN").mkdir()
    X = RNG.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    savemat(tmp_path / "SVHN" / "test_32x32.mat", {"X": X, "y": np.array([[10], [1], [2], [10], [9]], np.uint8)})
    test = load_dataset("svhn", "test", data_dir=tmp_path)
    assert test.x.shape == (5, 3, 32, 32) and test.labels.tolist() == [0, 1, 2, 0, 9]
    assert torch.equal(levels(test.x, 8), torch.from_numpy(X).permute(3, 2, 0, 1))
    with pytest.raises(DataNotFoundError, match=r"expected SVHN/train_32x32.mat .*does not download it"):
        load_dataset("svhn", "train", data_dir=tmp_path)


# -- streaming ------------------------------------------------------------------------------------------
def test_streamed_split_gives_the_in_memory_minibatches(classes):
    root, _ = classes
    memory = load_dataset("folder", "train", path=str(root), in_memory=True)
    stream = load_dataset("folder", "train", path=str(root), in_memory=False, workers=0)
    assert isinstance(stream, StreamingSplit) and len(stream) == 18 and stream.shape == memory.shape
    for epoch in (1, 2):
        for a, b in zip(memory.batches(5, epoch=epoch), stream.batches(5, epoch=epoch), strict=True):
            assert torch.equal(a, b)
    assert torch.equal(stream.rows(3, 11), memory.x[3:11]) and torch.equal(stream.x[:4], memory.x[:4])
    picked = torch.tensor([5, 0, 7])
    assert torch.equal(stream.select(picked).epoch(0), memory.select(picked).x)
    assert torch.equal(stream.select(picked).labels, memory.labels[picked])


def test_streamed_binarization_is_seeded_per_example(tmp_path):
    np.save(tmp_path / "g.npy", RNG.integers(0, 256, (40, 6, 6), dtype=np.uint8))
    kw = dict(path=str(tmp_path / "g.npy"), in_memory=False, workers=0)
    static = load_dataset("arrays", "train", binarize="static", **kw)
    assert torch.equal(static.epoch(1), static.epoch(2)) and static.bits == 1
    assert torch.equal(static.select(torch.arange(5, 10)).epoch(1), static.epoch(1)[5:10])  # per example
    dynamic = load_dataset("arrays", "train", binarize="dynamic", **kw)
    one, two = dynamic.epoch(1), dynamic.epoch(2)
    assert not torch.equal(one, two) and torch.equal(one, dynamic.epoch(1))
    grey = load_dataset("arrays", "train", **kw).epoch(0)
    # the draws follow the grey levels: mean over 36 × 36 pixels within 4 standard errors (0.0139)
    assert abs(one.mean() - grey.mean()) < 4 * (0.25 / one.numel()) ** 0.5


def _history(split, test):
    vae = pyrovae.VAE((28, 28), 4, hidden=(16,), likelihood="continuous-bernoulli")
    return pyrovae.train(vae.model, vae.guide, split, test_data=test, epochs=2, batch_size=5, seed=0,
                         progress=False, device="cpu")


def test_more_workers_than_cpus_is_said_once_not_every_epoch(tmp_path):
    """data.workers above the CPUs this process may use: one warning of ours at load, and the
    loaders use that many CPUs (torch's own warning, at every DataLoader, i.e. every epoch, never comes)."""
    np.save(tmp_path / "x.npy", RNG.integers(0, 256, (40, 4), dtype=np.uint8))
    cpus = len(os.sched_getaffinity(0))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        split = load_dataset("arrays", "train", path=str(tmp_path / "x.npy"), in_memory=False, workers=cpus + 7)
        for epoch in range(3):
            assert sum(len(b) for b in split.batches(12, epoch=epoch)) == len(split)
    about_workers = [str(w.message) for w in said if "worker" in str(w.message)]
    assert about_workers == [f"data.workers = {cpus + 7} is more than the {cpus} CPU(s) this process may use: "
                             f"{cpus} worker process(es) read the data"]


@pytest.mark.slow
def test_same_elbo_streamed_or_in_memory(classes):
    """The same run (seed 0) on the folder in memory, streamed in the main process, streamed by 2 workers."""
    root, _ = classes
    histories = []
    for in_memory, workers in ((True, 0), (False, 0), (False, 2)):
        splits = [load_dataset("folder", s, path=str(root), in_memory=in_memory, workers=workers)
                  for s in ("train", "test")]
        pyro.clear_param_store()
        torch.manual_seed(0)
        histories.append(_history(*splits))
    for h in histories[1:]:
        for a, b in zip(histories[0], h, strict=True):
            for key in ("train_elbo", "test_elbo", "reconstruction", "kl"):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), key
    assert histories[0][1]["train_elbo"] != histories[0][0]["train_elbo"]   # it trained


# -- the command line, end to end -----------------------------------------------------------------------
TINY = ["--set", "train.epochs=1", "--set", "model.hidden=[32]", "--set", "model.latent_dim=4",
        "--set", "train.batch_size=10"]


@pytest.mark.parametrize("labels, shown", [
    (np.arange(20) % 10 * 1000, "(0, 1000, 2000, 3000, ...) are 10 distinct values up to 9000, which would make "
                                "9001 classes: map them to 0..9 first"),
    (np.full(20, 10**9), "(1000000000) are 1 distinct values up to 1000000000"),
])
def test_conditional_vae_on_labels_that_are_not_classes(tmp_path, capsys, labels, shown):
    np.savez(tmp_path / "d.npz", x=RNG.integers(0, 256, (20, 4, 4), dtype=np.uint8), y=labels)
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "data.dataset=arrays", "--set",
                 f"data.path={tmp_path / 'd.npz'}", "--set", "data.label_key=y", "--set", "model.family=cvae"]
                + TINY) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a model with labels needs the classes 0..K-1; the labels " + shown in err
    assert "numpy.unique(y, return_inverse=True)[1]" in err


@pytest.mark.slow
def test_cli_trains_on_a_folder_of_pngs(classes, tmp_path):
    root, _ = classes
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "data.dataset=folder", "--set", f"data.path={root}",
                 "--set", "data.binarize=none", "--set", "model.likelihood=continuous-bernoulli"] + TINY) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] == 18 and summary["n_test"] == 2
    assert -1e4 < summary["final"]["test_elbo"] < 1e4                      # finite, nats per image
    assert f'path = "{root}"' in (out / "config.toml").read_text()


@pytest.mark.slow
def test_cli_trains_on_an_npz_streamed(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=RNG.integers(0, 256, (60, 10, 10), dtype=np.uint8), y=np.arange(60) % 3)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "data.dataset=arrays", "--set", f"data.path={tmp_path / 'd.npz'}",
                 "--set", "data.label_key=y", "--set", "data.in_memory=false", "--set", "data.workers=0"] + TINY) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] == 54 and summary["n_test"] == 6 and summary["data"].startswith("arrays")
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "r2"), "--set", "data.dataset=arrays",
                 "--set", f"data.path={tmp_path / 'none.npz'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("pyrovae: error:") and "none.npz does not exist" in err
