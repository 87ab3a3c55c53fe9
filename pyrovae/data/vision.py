"""CIFAR-10 and SVHN from the data dir, in torchvision's file formats (read here, never downloaded).

========  ==================================================  ===================  ======
name      files (in the data dir)                             x                    labels
========  ==================================================  ===================  ======
cifar10   ``cifar-10-batches-py/data_batch_1`` .. ``_5``,     uint8 [N, 3, 32, 32]  0..9
          ``test_batch`` (torchvision's ``CIFAR10`` lists)    (the model: x / 255)
svhn      ``SVHN/train_32x32.mat``, ``SVHN/test_32x32.mat``    uint8 [N, 3, 32, 32]  0..9
          (torchvision's ``SVHN.split_list``)                                       (10 → 0)
========  ==================================================  ===================  ======

Both keep their files' train/test split. CIFAR-10's batches are Python pickles; torchvision
unpickles them with ``pickle.load``, which can run any code a file names. pyrovae never
unpickles arbitrary objects: :class:`ArrayUnpickler` resolves only numpy's array reconstruction
(``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``) and
``_codecs.encode`` (how Python 3 pickles bytes at protocol 2); any other global is refused with
a DataError naming the file. SVHN's MATLAB files are read by ``scipy.io.loadmat``. What is
checked is the content (uint8 pixels of the right shape, one label per image, labels in 0..9),
not torchvision's md5s, so a smaller file of the same format (a test's) reads too.
"""
from __future__ import annotations

import codecs
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .cache import not_found, require_data_dir
from .sources import Source, TensorExamples, check_labels

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

CIFAR_FOLDER = "cifar-10-batches-py"
SVHN_FOLDER = "SVHN"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)

#: the only globals a CIFAR-10 batch may name
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


def _nbytes(shape, dtype) -> int | None:
    """The bytes an array of ``shape`` and ``dtype`` takes (None if they are not a shape and a dtype)."""
    try:
        dims = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims):
            return None
        return math.prod(int(d) for d in dims) * np.dtype(dtype).itemsize
    except (TypeError, ValueError):
        return None


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler of builtin containers, numbers, strings and numpy arrays only, and of no
    array larger than ``limit`` bytes (the file's size: a pickled array holds its bytes, so a
    larger one is a file declaring a shape it cannot fill, refused before anything is allocated)."""

    def __init__(self, file, *, limit: int, **kwargs):
        super().__init__(file, **kwargs)
        self.limit = limit

    def _check(self, shape, dtype) -> None:
        nbytes = _nbytes(shape, dtype)
        if nbytes is not None and nbytes > self.limit:
            raise pickle.UnpicklingError(f"it declares an array of shape {np.atleast_1d(shape).tolist()} ({nbytes} "
                                         f"bytes), more than the file's {self.limit} bytes")

    def find_class(self, module: str, name: str):
        try:
            found = SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not a numpy array part") from None
        if found is _reconstruct:
            def reconstruct(subtype, shape, dtype):
                self._check(shape, dtype)
                return _reconstruct(subtype, shape, dtype)
            return reconstruct
        if found is np.ndarray:
            unpickler = self

            class Bounded(np.ndarray):  # as a subtype: arrays built by _reconstruct; called: checked first
                def __new__(cls, shape, dtype=float, *args, **kwargs):
                    unpickler._check(shape, dtype)
                    return np.ndarray.__new__(np.ndarray, shape, dtype, *args, **kwargs)
            return Bounded
        return found


def _files(names: list[str], folder: str, data_dir: Path, why: str) -> list[Path]:
    expected = [f"{folder}/{n}" for n in names]
    require_data_dir(data_dir, expected)
    missing = [rel for rel in expected if not (data_dir / rel).is_file()]
    if missing:
        raise not_found(data_dir, expected, f"Missing {missing[0]}; pyrovae does not download it: {why}")
    return [data_dir / rel for rel in expected]


def _entry(batch: dict, name: str, path: Path):
    for key in (name, name.encode()):
        if key in batch:
            return batch[key]
    raise DataError(f"data file {path} holds no {name!r} entry: expected a CIFAR-10 python batch")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 ``[n, 3, 32, 32]``, labels ``[n]``) of one CIFAR-10 python batch, unpickled safely."""
    try:
        with open(path, "rb") as f:
            batch = ArrayUnpickler(f, limit=os.fstat(f.fileno()).st_size, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as err:
        raise DataError(f"data file {path} is not a CIFAR-10 python batch ({type(err).__name__}: {err}): replace it "
                        f"with an intact copy") from None
    if not isinstance(batch, dict):
        raise DataError(f"data file {path} holds a {type(batch).__name__}, expected a CIFAR-10 batch (a dict)")
    data, labels = _entry(batch, "data", path), _entry(batch, "labels", path)
    size = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        raise DataError(f"data file {path}: expected data uint8 [n, {size}], got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {list(getattr(data, 'shape', []))}")
    return np.asarray(data).reshape(-1, *IMAGE_SHAPE), np.asarray(labels)


def _checked(x: np.ndarray, labels: np.ndarray, where: str, name: str, split: str) -> Source:
    y = check_labels(labels, len(x), where)
    if len(y) and y.max() >= NUM_CLASSES:
        raise DataError(f"{where}: labels must be in 0..{NUM_CLASSES - 1}, got {int(y.max())}")
    return Source(TensorExamples(torch.from_numpy(np.ascontiguousarray(x)), 8, where), torch.arange(len(x)), y,
                  f"{name}: its own {split} split")


def load_cifar10(split: str, data_dir: Path, seed: int) -> Source:
    """CIFAR-10's ``split`` from ``<data dir>/cifar-10-batches-py`` (see the module doc)."""
    from torchvision.datasets import CIFAR10

    names = [n for n, _ in (CIFAR10.train_list if split == "train" else CIFAR10.test_list)]
    paths = _files(names, CIFAR_FOLDER, data_dir, "unpack cifar-10-python.tar.gz "
                   "(https://www.cs.toronto.edu/~kriz/cifar.html) into the data directory")
    parts = [read_cifar_batch(p) for p in paths]
    x = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([np.asarray(p[1]).reshape(-1) for p in parts])
    return _checked(x, labels, f"CIFAR-10 {split} batches in {data_dir / CIFAR_FOLDER}", "cifar10", split)


def load_svhn(split: str, data_dir: Path, seed: int) -> Source:
    """SVHN's ``split`` from ``<data dir>/SVHN/<split>_32x32.mat`` (see the module doc)."""
    from scipy.io import loadmat
    from torchvision.datasets import SVHN

    (path,) = _files([SVHN.split_list[split][1]], SVHN_FOLDER, data_dir,
                     "download it from http://ufldl.stanford.edu/housenumbers/ into the data directory's SVHN/")
    try:
        mat = loadmat(path)
        x, y = mat["X"], mat["y"]
    except Exception as err:  # noqa: BLE001 - scipy raises many kinds (MatReadError, KeyError, ...)
        raise DataError(f"data file {path} is not an SVHN .mat file with X and y ({type(err).__name__}: {err}): "
                        f"replace it with an intact copy") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"data file {path}: expected X uint8 [32, 32, 3, n], got {x.dtype} {list(x.shape)}")
    y = np.asarray(y).reshape(-1).astype(np.int64)
    y[y == 10] = 0
    return _checked(np.transpose(x, (3, 2, 0, 1)), y, f"data file {path}", "svhn", split)
