"""One split of a data set as one tensor on one device: :class:`DataSplit`, and binarization.

Binarization (``binarize``)
    ``"none"``: grey levels as they are.  ``"static"``: one ``torch.bernoulli`` draw at load
    time with a fixed seed (0 for train, 1 for test).  ``"dynamic"``: a fresh draw every epoch
    (:meth:`DataSplit.epoch`), seeded by ``(seed, epoch)``.  The test set is always binarized
    once with its fixed seed when ``binarize != "none"``, for ``"dynamic"`` too.

Bit depth (``bits``)
    The values the model sees (:meth:`DataSplit.epoch`) are ``k / (2**bits - 1)`` for integers
    ``k`` in ``0 .. 2**bits - 1``: ``bits = 8`` for 8-bit images kept as grey levels (MNIST,
    Frey Face, PNG folders, uint8 arrays; ``x * 255`` rounds back to the file's bytes, see
    :func:`levels`), ``bits = 1`` once binarized (static or dynamic), ``None`` for real values.

The minibatch protocol (shared with :class:`pyrovae.data.streaming.StreamingSplit`)
    ``len``, ``shape``, ``to(device)``, ``select(idx)``, ``order(epoch)``, ``take(chunks,
    epoch)`` (one tensor per index chunk), ``batches(batch_size, epoch=...)`` (``take`` over
    ``order(epoch).split(batch_size)``) and ``rows(start, stop, epoch)``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

BINARIZE_MODES = ("none", "static", "dynamic")
SPLITS = ("train", "test")
FIXED_BINARIZE_SEED = {"train": 0, "test": 1}  # the seed of each split's one-off binarization
SHUFFLE_STREAM, BINARIZE_STREAM = 0, 1


def derived_seed(seed: int, epoch: int, stream: int, *more: int) -> int:
    """A 63-bit seed for (seed, epoch, purpose, *more), via numpy's SeedSequence (streams independent)."""
    state = np.random.SeedSequence([seed, epoch, stream, *more]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def visiting_order(n: int, device: torch.device, seed: int, epoch: int, *, shuffle: bool = True,
                   generator: torch.Generator | None = None) -> Tensor:
    """The order of ``epoch`` over ``n`` datapoints: ``torch.randperm(n)`` on ``device`` drawn with
    ``generator`` (which must live on that device), else with one seeded by ``(seed, epoch)``;
    ``arange(n)`` without ``shuffle``. The same on every kind of split, so streamed and in-memory
    data visit the same minibatches."""
    if not shuffle:
        return torch.arange(n, device=device)
    if generator is None:
        generator = seeded_generator(device, derived_seed(seed, epoch, SHUFFLE_STREAM))
    return torch.randperm(n, device=device, generator=generator)


def levels(x: Tensor, bits: int) -> Tensor:
    """The integer levels ``k = round(x * (2**bits - 1))`` (uint8 for ``bits <= 8``) of data whose
    ``bits`` is set: for 8-bit images the file's bytes."""
    k = (x * (2 ** bits - 1)).round()
    return k.to(torch.uint8) if bits <= 8 else k.long()


@dataclass
class DataSplit:
    """One split of a data set as one tensor on one device; batches are index slices of it.

    ``x``: ``[N, *shape]`` float32, intensities in [0, 1] for images (in {0, 1} once
    binarized), real values for synthetic sets.  ``labels``: int64 ``[N]`` or None.
    ``binarize``: ``"none"``, ``"static"`` (``x`` is already 0/1) or ``"dynamic"`` (``x`` holds
    the grey levels, :meth:`epoch` draws the 0/1 data).  ``seed`` seeds the per-epoch draws.
    ``params``: the generating parameters of a synthetic set, else None.  ``bits``: what the
    model sees is ``k / (2**bits - 1)`` (8: 8-bit grey levels, 1: binarized; None: real values;
    see the module doc).  ``note``: how the split was made where that is not the set's own
    (e.g. a seeded train/test split of a folder), else ''.  ``fingerprint``: of the data and
    the split (:func:`pyrovae.data.sources.fingerprint`), '' when not computed.
    """

    x: Tensor
    labels: Tensor | None
    name: str
    split: str = "train"
    binarize: str = "none"
    seed: int = 0
    params: dict | None = None
    bits: int | None = None
    note: str = ""
    fingerprint: str = ""

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> torch.Size:
        """The shape of one example, ``x.shape[1:]`` (e.g. ``[28, 28]``)."""
        return self.x.shape[1:]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: str | torch.device) -> "DataSplit":
        """A copy with ``x`` and ``labels`` on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, x=self.x.to(device), labels=labels)

    def select(self, idx: Tensor) -> "DataSplit":
        """A copy holding the datapoints ``idx`` (indices on any device) of ``x`` and ``labels``."""
        labels = None if self.labels is None else self.labels[idx.to(self.labels.device)]
        return replace(self, x=self.x[idx.to(self.device)], labels=labels)

    def epoch(self, epoch: int) -> Tensor:
        """The data ``[N, *shape]`` for ``epoch``: for ``"dynamic"`` a fresh Bernoulli draw
        seeded by ``(seed, epoch)`` (so resumed runs repeat it), else the stored ``x``."""
        if self.binarize != "dynamic":
            return self.x
        g = seeded_generator(self.device, derived_seed(self.seed, epoch, BINARIZE_STREAM))
        return torch.bernoulli(self.x, generator=g)

    def order(self, epoch: int, *, shuffle: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """The visiting order of ``epoch`` (:func:`visiting_order`, on the data's device)."""
        return visiting_order(len(self), self.device, self.seed, epoch, shuffle=shuffle, generator=generator)

    def take(self, chunks: Iterable[Tensor], epoch: int) -> Iterator[Tensor]:
        """One tensor ``[len(idx), *shape]`` of :meth:`epoch`'s data per index tensor ``idx`` in ``chunks``."""
        data = self.epoch(epoch)
        for idx in chunks:
            yield data.index_select(0, idx.to(self.device))

    def rows(self, start: int = 0, stop: int | None = None, epoch: int = 0) -> Tensor:
        """Datapoints ``start:stop`` of :meth:`epoch`'s data."""
        return self.epoch(epoch)[start:stop]

    def batches(
        self,
        batch_size: int,
        *,
        epoch: int,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[Tensor]:
        """Mini-batches ``[<=batch_size, *shape]`` of :meth:`epoch`, as index slices in the order
        of :meth:`order`. The last batch may be smaller."""
        return self.take(self.order(epoch, shuffle=shuffle, generator=generator).split(batch_size), epoch)


def binarize_once(x: Tensor, split: str) -> Tensor:
    """One Bernoulli draw of ``x`` with the split's fixed seed (on the CPU)."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(FIXED_BINARIZE_SEED[split]))


def stored_mode(binarize: str, split: str) -> str:
    """What is stored: the test set is binarized once even for ``"dynamic"``."""
    return "static" if binarize == "dynamic" and split == "test" else binarize
