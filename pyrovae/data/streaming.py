"""Data that stays on the host and reaches the device a minibatch at a time: :class:`StreamingSplit`.

A :class:`StreamingSplit` follows :class:`~pyrovae.data.splits.DataSplit`'s minibatch protocol
(``len``, ``shape``, ``to``, ``select``, ``order``, ``take``, ``batches``, ``rows``, ``epoch``)
over a :class:`~pyrovae.data.sources.Source`'s examples. Each epoch's minibatches come from a
``torch.utils.data.DataLoader`` (``workers`` worker processes, pinned memory when the device is
CUDA) whose batch sampler is the epoch's visiting order cut into minibatches — the very
``torch.randperm`` of :func:`~pyrovae.data.splits.visiting_order` that an in-memory split draws,
on the same device — and whose examples (uint8 levels, a quarter of the bytes of float32) become
floats on the device (:func:`~pyrovae.data.sources.to_float`, the in-memory path's ``x / 255``).
So with the same seed the minibatches, hence the ELBOs, are those of the in-memory split.

Binarization when streaming draws each example by itself, in the worker, seeded by the example's
position in its files: ``(FIXED_BINARIZE_SEED[split], 0, stream, i)`` once for ``"static"``,
``(seed, epoch, stream, i)`` for ``"dynamic"`` — reproducible whatever the workers or the order,
but not the draws of an in-memory split (which draws the whole tensor at once). Grey levels
(``binarize = "none"``) are the same either way.

:func:`keep_in_memory` is the size rule: ``in_memory = "auto"`` keeps a split in memory when its
float32 size is at most :data:`MEMORY_FRACTION` of the memory free on the device.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

import torch
from torch import Tensor

from ..errors import DataError
from ..schema import switch
from .sources import Examples, Source, to_float
from .splits import BINARIZE_STREAM, FIXED_BINARIZE_SEED, derived_seed, visiting_order

#: ``in_memory = "auto"``: a split is kept in memory when its float32 size is at most this fraction of the free memory
MEMORY_FRACTION = 0.5
#: rows read per DataLoader batch by :meth:`StreamingSplit.rows` and :func:`materialize`
ROWS_CHUNK = 1024


def available_memory(device) -> int:
    """Bytes free on ``device``: ``torch.cuda.mem_get_info`` on CUDA, the host's ``MemAvailable`` else."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def keep_in_memory(in_memory, nbytes: int, device) -> bool:
    """``in_memory``: ``"on"``/True (one tensor on the device), ``"off"``/False (stream), ``"auto"`` (one tensor when
    ``nbytes`` ≤ :data:`MEMORY_FRACTION` × :func:`available_memory`)."""
    mode = switch("in_memory", in_memory)
    if mode == "auto":
        return nbytes <= MEMORY_FRACTION * available_memory(device)
    return mode == "on"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; torch's DataLoader counts the same)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


#: the worker counts already said to exceed the CPUs (said once per process)
_CAPPED: set = set()


def check_workers(workers) -> int:
    """``workers`` as the DataLoaders will use it: at most :func:`usable_cpus` (more only slow a
    loader down; torch would warn about it at every loader it builds, i.e. every epoch), said
    once per process by a warning."""
    cpus = usable_cpus()
    if workers > cpus and workers not in _CAPPED:
        _CAPPED.add(workers)
        warnings.warn(f"data.workers = {workers} is more than the {cpus} CPU(s) this process may use: {cpus} "
                      f"worker process(es) read the data", stacklevel=2)
    return min(workers, cpus)


class _EpochView(torch.utils.data.Dataset):
    """Position k of a split in one epoch: example ``index[k]``, binarized by itself when asked."""

    def __init__(self, examples: Examples, index: Tensor, binarize: str, seed: int, epoch: int, split: str):
        self.examples, self.index, self.binarize = examples, index, binarize
        self.seed, self.epoch, self.split = seed, epoch, split

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int):
        i = int(self.index[k])
        x = self.examples.read(i)
        if isinstance(x, str) or self.binarize == "none":
            return x
        if self.binarize == "static":
            seed = derived_seed(FIXED_BINARIZE_SEED[self.split], 0, BINARIZE_STREAM, i)
        else:
            seed = derived_seed(self.seed, self.epoch, BINARIZE_STREAM, i)
        p = to_float(x, self.examples.bits)
        return torch.bernoulli(p, generator=torch.Generator().manual_seed(seed)).to(torch.uint8)


def _stack(items: list):
    """A batch of examples, or the first example's problem (a str) — raised by the main process."""
    problem = next((item for item in items if isinstance(item, str)), None)
    return problem if problem is not None else torch.stack(items)


def _loader(view: _EpochView, chunks: list, workers: int, pin: bool) -> Iterator[Tensor]:
    """Batches of ``view`` at the positions of each chunk, read by ``workers`` processes."""
    if not chunks:
        return
    workers = min(workers, usable_cpus(), len(chunks)) if len(chunks) > 1 else 0
    # its own generator: a DataLoader draws its workers' base seed from it, which would otherwise
    # advance the global torch RNG (and change the run's draws) whenever a streamed split is read
    loader = torch.utils.data.DataLoader(view, batch_sampler=chunks, num_workers=workers,
                                         collate_fn=_stack, pin_memory=pin, generator=torch.Generator())
    for batch in loader:
        if isinstance(batch, str):
            raise DataError(batch)
        yield batch


def materialize(source: Source, workers: int = 0) -> Tensor:
    """All of ``source``'s examples in its order, one tensor ``[n, *shape]`` (uint8 levels or float32)."""
    fast = source.examples.read_many(source.index)
    if fast is not None:
        return fast
    view = _EpochView(source.examples, source.index, "none", 0, 0, "train")
    chunks = [c.tolist() for c in torch.arange(len(source)).split(ROWS_CHUNK)]
    return torch.cat(list(_loader(view, chunks, workers, pin=False)))


@dataclass
class StreamingSplit:
    """One split of a data set kept on the host and streamed to ``device`` a minibatch at a time.

    ``examples`` and ``index`` (int64 ``[N]`` on the CPU): the split is ``examples[index[k]]`` for
    k < N.  ``labels``: int64 ``[N]`` on ``device``, or None.  ``binarize``, ``seed``, ``params``,
    ``bits``, ``note``: as in :class:`~pyrovae.data.splits.DataSplit`.  ``dtype``: of the batches.
    ``workers``: DataLoader worker processes (0 reads in the main process).  ``fingerprint``: as in
    :class:`~pyrovae.data.splits.DataSplit`.
    """

    examples: Examples
    index: Tensor
    labels: Tensor | None
    name: str
    split: str = "train"
    binarize: str = "none"
    seed: int = 0
    params: dict | None = None
    bits: int | None = None
    note: str = ""
    workers: int = 2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        """The shape of one example (e.g. ``[28, 28]``, ``[3, 32, 32]``)."""
        return torch.Size(self.examples.shape)

    @property
    def x(self) -> "_Rows":
        """Slices read as tensors on the device: ``split.x[:n]`` is :meth:`rows` ``(0, n)``."""
        return _Rows(self)

    def to(self, device) -> "StreamingSplit":
        """A copy whose batches (and labels) go to ``device``; the examples stay on the host."""
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, device=torch.device(device), labels=labels)

    def astype(self, dtype: torch.dtype) -> "StreamingSplit":
        """A copy whose batches have floating ``dtype``."""
        return replace(self, dtype=dtype)

    def select(self, idx: Tensor) -> "StreamingSplit":
        """A copy holding the datapoints ``idx`` (int64 positions or a bool mask, on any device)."""
        labels = None if self.labels is None else self.labels[idx.to(self.labels.device)]
        return replace(self, index=self.index[idx.cpu()], labels=labels)

    def order(self, epoch: int, *, shuffle: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """The visiting order of ``epoch`` on ``device``: :func:`~pyrovae.data.splits.visiting_order`,
        the same permutation an in-memory split on that device draws."""
        return visiting_order(len(self), self.device, self.seed, epoch, shuffle=shuffle, generator=generator)

    def take(self, chunks: Iterable[Tensor], epoch: int) -> Iterator[Tensor]:
        """One batch ``[len(idx), *shape]`` on ``device`` per index tensor ``idx`` in ``chunks``,
        read ahead by the DataLoader's workers."""
        view = _EpochView(self.examples, self.index, self.binarize, self.seed, epoch, self.split)
        pin = self.device.type == "cuda"
        for batch in _loader(view, [c.tolist() for c in chunks], self.workers, pin):
            yield to_float(batch.to(self.device, non_blocking=pin), self.bits, self.dtype)

    def batches(self, batch_size: int, *, epoch: int, shuffle: bool = True,
                generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """Minibatches ``[<=batch_size, *shape]`` in the order of :meth:`order`; the last may be smaller."""
        return self.take(self.order(epoch, shuffle=shuffle, generator=generator).split(batch_size), epoch)

    def rows(self, start: int = 0, stop: int | None = None, epoch: int = 0) -> Tensor:
        """Datapoints ``start:stop`` of ``epoch`` as one tensor on ``device`` (read in chunks)."""
        start, stop, _ = slice(start, stop).indices(len(self))
        positions = torch.arange(start, max(start, stop))
        if len(positions) == 0:
            return torch.empty(0, *self.shape, dtype=self.dtype, device=self.device)
        return torch.cat(list(self.take(positions.split(ROWS_CHUNK), epoch)))

    def epoch(self, epoch: int) -> Tensor:
        """Every datapoint of ``epoch`` as one tensor on ``device`` (reads the whole split)."""
        return self.rows(0, None, epoch)


class _Rows:
    """``split.x`` of a :class:`StreamingSplit`: ``[a:b]`` reads those rows; ``len`` and ``shape``."""

    def __init__(self, split: StreamingSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self.split), *self.split.shape])

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.split.rows(key, key + 1 if key != -1 else None)[0]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"a streamed split's x takes an index or a slice a:b, got {key!r}")
        return self.split.rows(key.start or 0, key.stop)
