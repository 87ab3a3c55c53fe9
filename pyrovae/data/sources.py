"""Examples read one at a time, and what a loader of a user's data returns (:class:`Source`).

An *example* is one datapoint as a tensor of ``shape``: uint8 levels ``k`` (``bits = 8``: grey
levels 0..255; ``bits = 1``: 0/1) or float32 real values (``bits = None``).  :func:`to_float`
turns a batch of them into what the model sees, ``k / (2**bits - 1)`` (the MNIST path's
``x / 255``) or the floats as they are.  A problem with one example (a file that does not decode)
is returned as a one-line string rather than raised, so that a DataLoader worker never turns it
into a multi-line traceback: the caller raises it as a :class:`~pyrovae.errors.DataError`.

:class:`Source`: examples, which of them make the split (``index``, in the split's order), their
labels and a note on how the split was made.  :func:`seeded_split` makes a train/test split for
sets whose files have none.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError, DataNotFoundError
from .splits import SPLITS

_ROWS = 4096  # rows per block when hashing examples


class Examples(torch.utils.data.Dataset):
    """N examples of one ``shape``; ``read(i)`` is example i (a tensor) or a one-line problem (a str).

    ``bits``: 8 for uint8 grey levels, 1 for uint8 0/1, None for float32 real values.
    ``value_range``: (min, max) of float examples, checked on load; None for levels (in [0, 1]
    once scaled).  ``where``: the file or folder they come from, for messages.
    """

    shape: tuple = ()
    bits: int | None = 8
    value_range: tuple | None = None
    where: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> Tensor | str:
        raise NotImplementedError

    def read_many(self, index: Tensor) -> Tensor | None:
        """Examples ``index`` stacked ``[len(index), *shape]`` in one call, or None (read one by one)."""
        return None

    def identity(self, digest) -> None:
        """Feed what identifies these examples (their contents, or their files' names and sizes) to
        ``digest`` (a :mod:`hashlib` object): see :func:`fingerprint`."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> Tensor | str:
        return self.read(i)


def _example_dtype(bits: int | None) -> torch.dtype:
    return torch.float32 if bits is None else torch.uint8


class TensorExamples(Examples):
    """Examples held in host memory: a tensor or a numpy array (a memory-mapped ``.npy`` too), first
    dimension N; read as uint8 levels (``bits`` 8 or 1) or float32 (``bits`` None)."""

    def __init__(self, data, bits: int | None, where: str = "", value_range: tuple | None = None):
        self.data, self.bits, self.where, self.value_range = data, bits, where, value_range
        self.shape = tuple(data.shape[1:])

    def __len__(self) -> int:
        return self.data.shape[0]

    def _tensor(self, rows) -> Tensor:
        t = rows if isinstance(rows, Tensor) else torch.from_numpy(np.array(rows))
        return t.to(_example_dtype(self.bits))

    def shrunk(self) -> str:
        """'' unless the data are a memory-mapped file now shorter than the array it holds (cut while
        being read: reading the lost pages would kill the process with a bus error); then the problem."""
        if not isinstance(self.data, np.memmap) or self.data.filename is None:
            return ""
        needed = self.data.offset + self.data.nbytes
        try:
            size = os.stat(self.data.filename).st_size
        except OSError as err:
            return f"array file {self.data.filename} cannot be read any more ({err.strerror}): restore it"
        if size >= needed:
            return ""
        return (f"array file {self.data.filename} was cut while being read ({size} bytes, its array needs {needed}): "
                f"restore it")

    def read(self, i: int) -> Tensor | str:
        return self.shrunk() or self._tensor(self.data[i])

    def identity(self, digest) -> None:
        """The data's bytes, a block of rows at a time (a memory-mapped array is read once)."""
        digest.update(repr((tuple(self.data.shape), str(self.data.dtype))).encode())
        for start in range(0, self.data.shape[0], _ROWS):
            block = self.data[start:start + _ROWS]
            block = block.cpu().contiguous().numpy() if isinstance(block, Tensor) else np.ascontiguousarray(block)
            digest.update(memoryview(block).cast("B"))

    def read_many(self, index: Tensor) -> Tensor:
        problem = self.shrunk()
        if problem:
            raise DataError(problem)
        if len(index) == len(self) and torch.equal(index, torch.arange(len(self))):
            rows = self.data  # all of it, in order: no copy
            return self._tensor(rows) if isinstance(rows, Tensor) else self._tensor(np.asarray(rows))
        return self._tensor(self.data[index if isinstance(self.data, Tensor) else index.numpy()])


def to_float(batch: Tensor, bits: int | None, dtype: torch.dtype = torch.float32) -> Tensor:
    """What the model sees: ``k / (2**bits - 1)`` for uint8 levels (``x / 255`` for 8 bits, 0/1 as
    is), float examples as they are; in ``dtype``, on the batch's device."""
    if batch.is_floating_point() or bits is None:
        return batch.to(dtype)
    scale = float(2 ** bits - 1)
    out = batch.to(dtype)
    return out.div_(scale) if scale != 1.0 else out


@dataclass
class Source:
    """One split of a user's data before it is put in memory or streamed: ``examples``, the
    positions ``index`` (int64 ``[n]``, in the split's order) of those that make the split,
    ``labels`` (int64 ``[n]`` or None) and ``note`` (how the split was made)."""

    examples: Examples
    index: Tensor
    labels: Tensor | None = None
    note: str = ""

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple:
        return self.examples.shape

    @property
    def nbytes(self) -> int:
        """The size of the split as one float32 tensor."""
        return len(self) * math.prod(self.shape) * 4

    def prefix(self, n: int) -> "Source":
        """The first ``n`` datapoints (``subset``)."""
        labels = None if self.labels is None else self.labels[:n]
        return replace(self, index=self.index[:n], labels=labels)


def fingerprint(source: Source) -> str:
    """What a checkpoint records of the data it was trained on: the sha256 (24 hex digits) of the
    examples' identity (:meth:`Examples.identity`: the contents of arrays, the names and sizes of
    image files), the positions that make the split (so another split seed or test fraction,
    or files added to a folder, change it) and the labels."""
    digest = hashlib.sha256()
    source.examples.identity(digest)
    digest.update(source.index.numpy().tobytes())
    if source.labels is not None:
        digest.update(source.labels.numpy().tobytes())
    return digest.hexdigest()[:24]


def seeded_split(n: int, split: str, test_fraction: float, split_seed: int, where: str) -> tuple[Tensor, str]:
    """(positions of ``split``, a note saying so) for a set of ``n`` whose files hold no split:
    ``torch.randperm(n)`` drawn with ``torch.Generator().manual_seed(split_seed)``; its last
    ``max(1, round(n * test_fraction))`` positions are the test set, the others (in that order)
    the train set."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(map(repr, SPLITS))}; got {split!r}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 1:
        raise DataError(f"{where} holds {n} example(s): a train/test split needs at least 2")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    note = (f"{where} has no train/test split of its own: a seeded one (torch.randperm({n}), seed {split_seed}), "
            f"{n - n_test} train / {n_test} test (data.test_fraction = {test_fraction})")
    return (perm[: n - n_test] if split == "train" else perm[n - n_test:]), note


def check_labels(labels, n: int, where: str) -> Tensor:
    """``labels`` as int64 ``[n]``: DataError naming ``where`` unless they are n whole numbers >= 0."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dtype.kind not in "iub" or labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{where}: expected {n} integer labels (one per image, shape [{n}]), got {labels.dtype} "
                        f"of shape {list(labels.shape)}")
    if n and labels.min() < 0:
        raise DataError(f"{where}: labels must be class indices >= 0, got {int(labels.min())}")
    return torch.from_numpy(labels.astype(np.int64))


#: the most classes a model with labels is built for from the data's labels (K = max label + 1)
MAX_CLASSES = 10_000


def class_count(labels: Tensor, where: str) -> int:
    """K for labels that are the classes 0..K−1 (K = max + 1): DataError when K is above
    :data:`MAX_CLASSES` or fewer than half of 0..K−1 occur (labels such as 0, 1000, ..., 9000
    that would build a 9001-class model), with the fix (map them to 0..K−1)."""
    present = torch.unique(labels)
    k = int(present.max()) + 1 if len(present) else 0
    if k > MAX_CLASSES or 2 * len(present) < k:
        shown = ", ".join(str(int(v)) for v in present[:4]) + (", ..." if len(present) > 4 else "")
        raise DataError(f"{where}: a model with labels needs the classes 0..K-1; the labels ({shown}) are "
                        f"{len(present)} distinct values up to {k - 1}, which would make {k} classes: map them to "
                        f"0..{len(present) - 1} first (numpy.unique(y, return_inverse=True)[1])")
    return k


def require_path(path, what: str, folder: bool) -> Path:
    """``path`` (``~`` expanded) as an existing folder or file: ConfigError when unset, DataNotFoundError when absent."""
    kind = "folder" if folder else "file"
    if not path:
        raise ConfigError(f"{what} must name the {kind} to read (data.path in a config); got nothing")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataNotFoundError(f"{what} {p} does not exist: expected a {kind}")
    if p.is_dir() != folder:
        raise DataError(f"{what} {p} is a {'folder' if p.is_dir() else 'file'}: expected a {kind}")
    return p
