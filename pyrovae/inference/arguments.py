"""The model's arguments over a data set, and their minibatches.

``pyrovae.train(model, guide, data)`` calls the pair on minibatches of ``data``, which may be

==========================  ==============================================  =====================
``data``                    a minibatch is                                  the pair is called as
==========================  ==============================================  =====================
a tensor ``[N, ...]``       ``x[idx]``                                      ``model(x)``
a ``DataSplit``             ``split.epoch(e)[idx]`` (dynamic binarization)  ``model(x)``
a ``StreamingSplit``        its DataLoader's batch at ``idx``               ``model(x)``
a tuple of them             each sliced by the same ``idx``                 ``model(*batch)``
a dict of them              each sliced by the same ``idx``                 ``model(**batch)``
==========================  ==============================================  =====================

Every element has the same first dimension N. The visiting order of an epoch is that of the first
``DataSplit`` among them (seeded by its seed and the epoch), else of one with seed 0, so a run is
reproducible and a resumed run draws the same minibatches.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..data.splits import DataSplit
from ..data.streaming import StreamingSplit
from ..errors import DataError, InputTypeError
from .distributed import shard_chunks

Call = Tuple[tuple, Dict[str, torch.Tensor]]


def _as_split(value, name: str, dtype: Optional[torch.dtype], convert_bool: bool) -> DataSplit:
    if isinstance(value, StreamingSplit):
        return value if dtype is None else value.astype(dtype)
    if isinstance(value, torch.Tensor):
        if value.dim() < 1 or value.shape[0] == 0:
            raise DataError(f"{name} must be a non-empty tensor [N, ...], got shape {list(value.shape)}")
        value = DataSplit(x=value, labels=None, name="tensor")
    if not isinstance(value, DataSplit):
        raise InputTypeError(f"{name} must be a torch.Tensor or pyrovae.data.DataSplit (or a tuple or dict of "
                             f"them), got {type(value).__name__}")
    if dtype is not None and value.x.dtype != dtype and (value.x.is_floating_point()
                                                         or (convert_bool and value.x.dtype == torch.bool)):
        value = replace(value, x=value.x.to(dtype))
    return value


class ModelArguments:
    """The arguments of ``model(*args, **kwargs)`` for every datapoint, as aligned tensors.

    ``dtype``: floating elements are converted to it (the model's parameters' dtype), a lossless
    or harmless change, and so is boolean data given alone (binary images); integer elements
    (labels) and boolean ones beside others (masks) are left alone.
    """

    def __init__(self, data, name: str = "data", dtype: Optional[torch.dtype] = None):
        if isinstance(data, dict):
            self.keys: List[Optional[str]] = list(data)
            values = list(data.values())
        elif isinstance(data, tuple):
            self.keys, values = [None] * len(data), list(data)
        else:
            self.keys, values = [None], [data]
        if not values:
            raise DataError(f"{name} must hold at least one tensor, got an empty {type(data).__name__}")
        self.single = not isinstance(data, (tuple, dict))
        self.splits = [_as_split(v, name if self.single else f"{name}[{k if k is not None else i!r}]", dtype,
                                 convert_bool=self.single)
                       for i, (k, v) in enumerate(zip(self.keys, values))]
        sizes = {len(s) for s in self.splits}
        if len(sizes) > 1:
            raise DataError(f"the elements of {name} must share their first dimension N, got sizes "
                            f"{[len(s) for s in self.splits]}")

    def __len__(self) -> int:
        return len(self.splits[0])

    @property
    def lead(self) -> DataSplit:
        """The split whose seed orders the epochs (the first DataSplit; tensors get seed 0)."""
        return self.splits[0]

    def to(self, device) -> "ModelArguments":
        out = object.__new__(ModelArguments)
        out.keys, out.single = self.keys, self.single
        out.splits = [s.to(device) for s in self.splits]
        return out

    def call(self, tensors) -> Call:
        """(args, kwargs) for the model from one tensor per element."""
        args = tuple(t for k, t in zip(self.keys, tensors) if k is None)
        return args, {k: t for k, t in zip(self.keys, tensors) if k is not None}

    def rows(self, start: int = 0, stop: Optional[int] = None, epoch: int = 0) -> Call:
        """The arguments for datapoints ``start:stop`` of ``epoch``'s data."""
        return self.call([s.rows(start, stop, epoch) for s in self.splits])

    def parts(self, size: int = 4096) -> Iterator[Call]:
        """Every datapoint: one call of :meth:`rows` when all elements are in memory, else calls
        over consecutive rows of ``size`` (a streamed set is never put on the device whole)."""
        if not any(isinstance(s, StreamingSplit) for s in self.splits):
            yield self.rows()
            return
        for start in range(0, len(self), size):
            yield self.rows(start, start + size)

    def batches(self, batch_size: int, epoch: int, shard: Optional[Tuple[int, int]] = None) -> Iterator[Call]:
        """Minibatches of ``batch_size`` (the last may be smaller), every element sliced alike.
        ``shard=(rank, world)``: rank's part of each global minibatch of ``batch_size``
        (:func:`pyrovae.inference.distributed.shard_chunks`), for data-parallel training."""
        if self.single and shard is None:  # the DataSplit's own path (the same draws as always)
            for x in self.lead.batches(batch_size, epoch=epoch):
                yield (x,), {}
            return
        chunks = self.lead.order(epoch).split(batch_size)
        if shard is not None:
            chunks = shard_chunks(chunks, *shard)
        for tensors in zip(*(s.take(chunks, epoch) for s in self.splits)):
            yield self.call(list(tensors))


def batch_size_of(args: tuple, kwargs: dict) -> int:
    """The number of datapoints in a call: the first dimension of its first tensor."""
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise InputTypeError("the model's arguments hold no tensor with a batch dimension: pass the data as "
                         "model(x, ...) arguments, the batch first")
