"""One split of a data set as one tensor on one device: :class:`DataSplit`, and binarization.

Binarization (``binarize``)
    ``"none"``: grey levels as they are.  ``"static"``: one ``torch.bernoulli`` draw at load
    time with a fixed seed (0 for train, 1 for test).  ``"dynamic"``: a fresh draw every epoch
    (:meth:`DataSplit.epoch`), seeded by ``(seed, epoch)``.  The test set is always binarized
    once with its fixed seed when ``binarize != "none"``, for ``"dynamic"`` too.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

BINARIZE_MODES = ("none", "static", "dynamic")
SPLITS = ("train", "test")
FIXED_BINARIZE_SEED = {"train": 0, "test": 1}  # the seed of each split's one-off binarization
_SHUFFLE_STREAM, _BINARIZE_STREAM = 0, 1


def _derived_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for (seed, epoch, purpose), via numpy's SeedSequence (streams independent)."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class DataSplit:
    """One split of a data set as one tensor on one device; batches are index slices of it.

    ``x``: ``[N, *shape]`` float32, intensities in [0, 1] for images (in {0, 1} once
    binarized), real values for synthetic sets.  ``labels``: int64 ``[N]`` or None.
    ``binarize``: ``"none"``, ``"static"`` (``x`` is already 0/1) or ``"dynamic"`` (``x`` holds
    the grey levels, :meth:`epoch` draws the 0/1 data).  ``seed`` seeds the per-epoch draws.
    ``params``: the generating parameters of a synthetic set, else None.
    """

    x: Tensor
    labels: Tensor | None
    name: str
    split: str = "train"
    binarize: str = "none"
    seed: int = 0
    params: dict | None = None

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
        g = _generator(self.device, _derived_seed(self.seed, epoch, _BINARIZE_STREAM))
        return torch.bernoulli(self.x, generator=g)

    def order(self, epoch: int, *, shuffle: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """The visiting order of ``epoch``: a ``torch.randperm`` on the data's device drawn with
        ``generator`` (which must live on that device), else with one seeded by ``(seed, epoch)``."""
        n = len(self)
        if not shuffle:
            return torch.arange(n, device=self.device)
        if generator is None:
            generator = _generator(self.device, _derived_seed(self.seed, epoch, _SHUFFLE_STREAM))
        return torch.randperm(n, device=self.device, generator=generator)

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
        data, order = self.epoch(epoch), self.order(epoch, shuffle=shuffle, generator=generator)
        for start in range(0, len(self), batch_size):
            yield data.index_select(0, order[start : start + batch_size])


def binarize_once(x: Tensor, split: str) -> Tensor:
    """One Bernoulli draw of ``x`` with the split's fixed seed (on the CPU)."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(FIXED_BINARIZE_SEED[split]))


def stored_mode(binarize: str, split: str) -> str:
    """What is stored: the test set is binarized once even for ``"dynamic"``."""
    return "static" if binarize == "dynamic" and split == "test" else binarize
