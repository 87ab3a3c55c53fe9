"""A numpy array file (``data.dataset = "arrays"``): ``.npz`` or ``.npy``, never unpickled.

``data.path`` = FILE. In an ``.npz``, ``data.key`` (default ``"x"``) names the data and
``data.label_key`` (optional) the labels; a file with ``<key>_train`` and ``<key>_test`` (and
``<label_key>_train``/``_test``) instead of ``<key>`` has its own split — Keras' ``mnist.npz``
reads with ``key = "x"``, ``label_key = "y"``. An ``.npy`` is the data alone, memory-mapped (so
a large one streams without being read into memory). Without a split of its own the split is
seeded (:func:`~pyrovae.data.sources.seeded_split`).

Accepted arrays (anything else is a DataError naming the file and key):

=======================  ========================================================================
shape                    ``[N, D]``, ``[N, H, W]`` or ``[N, C, H, W]`` with C = 1 or 3
                         (``[N, 1, H, W]`` becomes ``[N, H, W]``, as grayscale images are)
dtype                    uint8, or integers in 0..255: 8-bit levels, the model sees ``x / 255``
                         (``bits = 8``; integers whose maximum is 1 are refused: 0/1 data are
                         stored as bool); bool: 0/1 (``bits = 1``); floats: real values as they
                         are (finite; ``bits = None``; binarization needs them in [0, 1])
labels                   integers >= 0, shape ``[N]`` (or ``[N, 1]``)
=======================  ========================================================================
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .sources import Source, TensorExamples, check_labels, require_path, seeded_split

_BLOCK = 4096  # rows per pass when checking a (memory-mapped) array


def _scan(x: np.ndarray):
    """(min, max, all finite) of ``x``, a block of rows at a time."""
    lo, hi, finite = np.inf, -np.inf, True
    for start in range(0, x.shape[0], _BLOCK):
        block = np.asarray(x[start:start + _BLOCK])
        finite = finite and bool(np.isfinite(block).all()) if block.dtype.kind == "f" else finite
        lo, hi = min(lo, block.min()), max(hi, block.max())
    return lo, hi, finite


def array_examples(x: np.ndarray, where: str) -> TensorExamples:
    """Check ``x`` (see the module doc) and wrap it as examples."""
    expected = "expected [N, D], [N, H, W] or [N, C, H, W] with C = 1 or 3"
    if not 2 <= x.ndim <= 4 or x.shape[0] == 0:
        raise DataError(f"{where} has shape {list(x.shape)}: {expected}, N > 0")
    if x.ndim == 4 and x.shape[1] not in (1, 3):
        hint = (" (it looks channels-last: store np.moveaxis(x, -1, 1))" if x.shape[-1] in (1, 3) else "")
        raise DataError(f"{where} has shape {list(x.shape)}: {expected}{hint}")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    kind = x.dtype.kind
    if kind == "b":
        return TensorExamples(x, 1, where)
    if kind not in "uif":
        raise DataError(f"{where} has dtype {x.dtype}: expected uint8 (8-bit levels), integers in 0..255, bool "
                        f"or floats")
    lo, hi, finite = _scan(x)
    if kind in "ui":
        if lo < 0 or hi > 255:
            raise DataError(f"{where} holds integers in {lo}..{hi}: expected 8-bit levels 0..255 (or store floats)")
        if hi == 1:
            raise DataError(f"{where} holds integers in {lo}..1: as 8-bit levels the model would see k/255 (at most "
                            f"0.004); for 0/1 data store bools (x.astype(bool)), for intensities store floats in [0, 1]")
        return TensorExamples(x, 8, where)
    if not finite:
        raise DataError(f"{where} holds NaN or infinite values: expected finite floats")
    return TensorExamples(x, None, where, value_range=(float(lo), float(hi)))


def _read_member(npz, name: str, file: Path) -> np.ndarray:
    try:
        return npz[name]
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{file} key {name!r} cannot be read without unpickling objects or is corrupt "
                        f"({type(err).__name__}: {err}): store a plain numeric array") from None


def _open(file: Path, mmap: bool):
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{file} is not a readable numpy file ({type(err).__name__}: {err}): expected an .npz or "
                        f".npy written by numpy.savez / numpy.save") from None


def load_arrays(split: str, data_dir: Path, seed: int, *, path: str, key: str = "x", label_key: str = "",
                test_fraction: float = 0.1, split_seed: int = 0) -> Source:
    """One split of the array file ``path`` (see the module doc) as a :class:`Source`."""
    file = require_path(path, "data.path", folder=False)
    if file.suffix not in (".npz", ".npy"):
        raise DataError(f"data.path {file} is not an .npz or .npy file: expected numpy.savez / numpy.save output")
    if file.suffix == ".npy":
        if label_key:
            raise ConfigError(f"data.label_key = {label_key!r} needs an .npz holding the labels; {file} is an .npy")
        x, labels, own, suffix = _open(file, mmap=True), None, False, ""
    else:
        with _open(file, mmap=False) as npz:
            names = list(npz.files)
            own = key not in names and {f"{key}_train", f"{key}_test"} <= set(names)
            suffix = f"_{split}" if own else ""
            if key + suffix not in names:
                raise DataError(f"{file} holds no array {key!r} (nor {key}_train and {key}_test): its keys are "
                                f"{names}; set data.key")
            if label_key and label_key + suffix not in names:
                raise DataError(f"{file} holds no labels {label_key + suffix!r}: its keys are {names}; set "
                                f"data.label_key (or leave it empty for none)")
            x = _read_member(npz, key + suffix, file)
            labels = _read_member(npz, label_key + suffix, file) if label_key else None
    where = f"{file}" + ("" if file.suffix == ".npy" else f" key {key + suffix!r}")
    examples = array_examples(x, where)
    if labels is not None:
        labels = check_labels(labels, len(examples), f"{file} key {label_key + suffix!r}")
    if own:
        index, note = torch.arange(len(examples)), f"{file}: its own split ({key}_{split})"
    else:
        index, note = seeded_split(len(examples), split, test_fraction, split_seed, str(file))
    return Source(examples, index, None if labels is None else labels[index], note)
