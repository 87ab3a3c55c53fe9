"""Data sets for pyrovae, each held as one tensor on one device where it fits.

Every loader returns a :class:`DataSplit` (a streamed one for data too large to hold) whose ``x``
has shape ``[N, *shape]``:

========================  ===============  ======================================  ========
name                      ``shape``        units of ``x``                          labels
========================  ===============  ======================================  ========
``mnist``                 ``[28, 28]``     float32 intensities in [0, 1]           0..9
``fashion-mnist``         ``[28, 28]``     float32 intensities in [0, 1]           0..9
``kmnist``                ``[28, 28]``     float32 intensities in [0, 1]           0..9
``frey``                  ``[28, 20]``     float32 intensities in [0, 1]           None
``ppca``                  ``[obs_dim]``    float32, real-valued (default 5)        None
``toy``                   ``[1]``          float32, real-valued                    None
``cifar10``               ``[3, 32, 32]``  float32 intensities in [0, 1]           0..9
``svhn``                  ``[3, 32, 32]``  float32 intensities in [0, 1]           0..9
``folder``                the images'      float32 intensities in [0, 1]           class
                          ``[H, W]`` or                                            folders,
                          ``[3, H, W]``                                            or None
``arrays``                the array's      floats as stored, uint8 as k / 255      optional
========================  ===============  ======================================  ========

Labels, where there are any, are int64 ``[N]``.

Where the files come from
    Real data is read from the *data dir* (:func:`resolve_data_dir`: ``--data-dir``, else
    ``$PYROVAE_DATA_DIR``, else ``~/.cache/pyrovae``) and is never written there.  MNIST-style
    sets are looked up as ``<data dir>/<Class>/raw/<file>.gz`` (``<Class>`` being ``MNIST``,
    ``FashionMNIST`` or ``KMNIST``, files named as in torchvision's ``resources``) or as the
    same names without ``.gz``; they are extracted into :func:`cache_dir`, which torchvision
    then reads.  Only when the files are absent does torchvision try to download them, into the
    cache; set ``PYROVAE_OFFLINE=1`` to skip that attempt.  Frey Face is
    ``<data dir>/FreyFace/frey_rawface.mat``.  A data dir that does not exist is an error for
    these sets, whatever the cache holds; what is checked in the files and the cache (md5,
    idx header and size, an entry keyed on its source) is in :mod:`pyrovae.data.cache`.

Splits
    MNIST-style sets keep their official 60000/10000 train/test split.  Frey Face has none:
    a permutation of its 1965 faces drawn with ``torch.Generator().manual_seed(0)``
    (``torch.randperm``) gives the train set (its first 1765 indices, in that order) and the
    test set (its last 200).  The synthetic sets draw 5000 + 1000 examples in one call and
    split them in that order, so both splits share one generating model.

Binarization: see :mod:`pyrovae.data.splits`.

A new data set is one loader function and one line, ``@DATASETS.register("name")``: it takes
``(split, data_dir, seed)`` and returns ``(x [N, ...], labels [N] or None, params or None)``;
mark a real-valued one with ``loader.real_valued = True`` (it is then never binarized).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..registry import Registry
from ..schema import Settings, defaults, one_of, setting
from .arrays import load_arrays
from .cache import cache_dir, downloaded, extract_sources, not_found, offline, require_data_dir, resolve_data_dir
from .folder import load_folder
from .sources import Source, TensorExamples, fingerprint, to_float
from .splits import BINARIZE_MODES, SPLITS, DataSplit, binarize_once, stored_mode
from .streaming import StreamingSplit, check_workers, keep_in_memory, materialize
from .vision import load_cifar10, load_svhn

FREY_FILE = "FreyFace/frey_rawface.mat"
FREY_SHAPE = (28, 20)
FREY_N = 1965
FREY_SPLIT_SEED = 0
FREY_N_TEST = 200
SYNTHETIC_SIZES = {"train": 5000, "test": 1000}


def _torchvision_class(class_name: str) -> type:
    import torchvision.datasets

    return getattr(torchvision.datasets, class_name)


def _try_download(cls: type, root: Path) -> str:
    """Let torchvision download ``cls`` into ``root``; returns what went wrong ('' if nothing)."""
    if offline():
        return "Download skipped: PYROVAE_OFFLINE is set."
    try:
        cls(root=str(root), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not available"
        return f"Download into {root} failed too: {type(err).__name__}: {err}"
    return ""


def _prepare_mnist_files(cls: type, data_dir: Path, cache: Path) -> Path:
    """The root torchvision reads ``cls`` from: the cache entry of ``data_dir``'s raw files (checked:
    see :mod:`.cache`), else the cache itself, holding a download of them."""
    expected = [(f"{cls.__name__}/raw/{f}", md5) for f, md5 in cls.resources]
    require_data_dir(data_dir, [rel for rel, _ in expected])
    entry = extract_sources(expected, data_dir, cache)
    if entry is not None:
        return entry
    if downloaded(expected, cache):
        return cache
    why = _try_download(cls, cache)
    if why:
        raise not_found(data_dir, [rel for rel, _ in expected], why)
    return cache


def load_mnist_like(class_name: str, split: str, data_dir: Path) -> tuple[Tensor, Tensor]:
    """``torchvision.datasets.<class_name>`` split: x float32 ``[N, 28, 28]`` in [0, 1], labels int64 ``[N]``.

    Raises DataNotFoundError when ``data_dir`` does not exist or lacks the files (and no download
    happened), DataError when a file is corrupt or truncated (see :mod:`pyrovae.data.cache`).
    """
    cls = _torchvision_class(class_name)
    root = _prepare_mnist_files(cls, data_dir, cache_dir())
    ds = cls(root=str(root), train=split == "train", download=False)
    if len(ds.data) != len(ds.targets):
        raise DataError(f"{class_name} {split} files in {data_dir} hold {len(ds.data)} images but "
                        f"{len(ds.targets)} labels: replace them with an intact set")
    return ds.data.float().div_(255.0), ds.targets.long()


def frey_split_indices(split: str) -> Tensor:
    """Indices into the 1965 faces: a ``manual_seed(0)`` randperm; first 1765 train, last 200 test."""
    one_of("split", split, SPLITS)
    perm = torch.randperm(FREY_N, generator=torch.Generator().manual_seed(FREY_SPLIT_SEED))
    n_train = FREY_N - FREY_N_TEST
    return perm[:n_train] if split == "train" else perm[n_train:]


def load_frey(data_dir: Path) -> Tensor:
    """All Frey faces: float32 ``[1965, 28, 20]`` in [0, 1] (``ff`` column k, row-major, / 255).

    Checked: ``data_dir`` exists and holds the file (else DataNotFoundError); the file reads as a
    MATLAB file with an ``ff`` array of shape ``[560, 1965]`` and whole values in 0..255 (else
    DataError naming the file).
    """
    require_data_dir(data_dir, [FREY_FILE])
    path = data_dir / FREY_FILE
    if not path.exists():
        raise not_found(data_dir, [FREY_FILE], "No such file.")
    from scipy.io import loadmat

    fix = "replace it with an intact copy (download frey_rawface.mat again)"
    try:
        ff = loadmat(path)["ff"]
    except Exception as err:  # noqa: BLE001 - scipy raises many kinds (MatReadError, OSError, IndexError...)
        raise DataError(f"data file {path} cannot be read ({type(err).__name__}: {err}): {fix}") from err
    expected = (FREY_SHAPE[0] * FREY_SHAPE[1], FREY_N)
    if ff.shape != expected or ff.dtype.kind not in "uif" or not ((ff >= 0) & (ff <= 255) & (ff % 1 == 0)).all():
        raise DataError(f"data file {path} holds ff {ff.dtype} {list(ff.shape)}, expected whole values in 0..255 "
                        f"of shape {list(expected)}: {fix}")
    return torch.from_numpy(ff.T.reshape(-1, *FREY_SHAPE).astype("uint8")).float().div_(255.0)


def ppca_data(
    n: int, *, latent_dim: int = 2, obs_dim: int = 5, sigma: float = 0.5, seed: int = 0
) -> tuple[Tensor, dict]:
    """Samples of probabilistic PCA: z ~ N(0, I), x = W z + b + sigma * eps, eps ~ N(0, I).

    One ``torch.Generator().manual_seed(seed)`` draws, in this order, ``W`` ``[obs_dim,
    latent_dim]`` with N(0, 1) entries, ``b`` ``[obs_dim]`` with N(0, 1) entries, ``z``
    ``[n, latent_dim]`` and ``eps`` ``[n, obs_dim]``.  Returns ``x`` float32 ``[n, obs_dim]`` and
    ``{"W", "b", "sigma"}``; the covariance of x is ``W W^T + sigma^2 I``.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(obs_dim, latent_dim, generator=g)
    b = torch.randn(obs_dim, generator=g)
    z = torch.randn(n, latent_dim, generator=g)
    x = z @ w.T + b + sigma * torch.randn(n, obs_dim, generator=g)
    return x, {"W": w, "b": b, "sigma": sigma}


def toy_data(
    n: int, *, a: float = 0.5, b: float = 2.0, mu: float = 0.0, seed: int = 0
) -> tuple[Tensor, dict]:
    """The lecture notes' toy model: z ~ Uniform(a, b), x ~ N(mu, z^2).

    One ``torch.Generator().manual_seed(seed)`` draws ``z`` ``[n, 1]`` then the noise
    ``[n, 1]``.  Returns ``x`` float32 ``[n, 1]`` (mean ``mu``, variance
    ``(a^2 + a b + b^2) / 3``) and ``{"a", "b", "mu"}``.
    """
    g = torch.Generator().manual_seed(seed)
    z = a + (b - a) * torch.rand(n, 1, generator=g)
    x = mu + z * torch.randn(n, 1, generator=g)
    return x, {"a": a, "b": b, "mu": mu}


# Each loader: (split, data_dir, seed) -> (x, labels, params)
_Loaded = tuple[Tensor, "Tensor | None", "dict | None"]


def _load_torchvision(class_name: str, split: str, data_dir: Path, seed: int) -> _Loaded:
    x, labels = load_mnist_like(class_name, split, data_dir)
    return x, labels, None


def _load_frey(split: str, data_dir: Path, seed: int) -> _Loaded:
    return load_frey(data_dir)[frey_split_indices(split)], None, None


def _load_synthetic(sampler: Callable, split: str, data_dir: Path, seed: int) -> _Loaded:
    n_train = SYNTHETIC_SIZES["train"]
    x, params = sampler(n_train + SYNTHETIC_SIZES["test"], seed=seed)
    return (x[:n_train] if split == "train" else x[n_train:]), None, params


#: name → loader ``(split, data_dir, seed) -> (x, labels, params)``
DATASETS = Registry("dataset")
DATASETS.register("mnist", partial(_load_torchvision, "MNIST"))
DATASETS.register("fashion-mnist", partial(_load_torchvision, "FashionMNIST"))
DATASETS.register("kmnist", partial(_load_torchvision, "KMNIST"))
DATASETS.register("frey", _load_frey)
for _name, _sampler in (("ppca", ppca_data), ("toy", toy_data)):
    _loader = partial(_load_synthetic, _sampler)
    _loader.real_valued = True
    DATASETS.register(_name, _loader)
DATASETS.register("cifar10", load_cifar10)
DATASETS.register("svhn", load_svhn)
DATASETS.register("folder", load_folder)
DATASETS.register("arrays", load_arrays)
for _name in ("mnist", "fashion-mnist", "kmnist", "frey"):
    DATASETS.get(_name).bits = 8
load_folder.options = ("path", "image_size", "channels", "test_fraction", "split_seed")
load_arrays.options = ("path", "key", "label_key", "test_fraction", "split_seed")

@dataclass
class DataOptions(Settings):
    """The options a loader may take (``loader.options``: the sets of the user's own files), each
    declared once: default, allowed values, help (also the config's ``[data]`` keys)."""

    path: str = setting("", "folder / arrays: the image folder or .npz/.npy file (made absolute, from the current "
                        "directory)")
    key: str = setting("x", "arrays: the data's name in the .npz (x_train/x_test: the file's own split)", test=bool,
                       words="a non-empty string")
    label_key: str = setting("", "arrays: the labels' name in the .npz (\"\" = none)")
    image_size: int = setting(0, "folder: resize and centre-crop to s × s (0 = keep the files' size)", low=0)
    channels: int = setting(0, "folder: 0 = as the images are (grayscale if all are), 1 = grayscale, 3 = RGB",
                            choices=(0, 1, 3))
    test_fraction: float = setting(0.1, "folder / arrays without a split of their own: the seeded test share",
                                   low=0, high=1, open="both")
    split_seed: int = setting(0, "... and the seed of that split", low=0)


@dataclass
class StreamOptions(Settings):
    """How :func:`load_dataset` holds a split: in memory or streamed (config keys ``data.in_memory``, ``data.workers``)."""

    in_memory: str = setting("auto", "on (true): one tensor on the device; off (false): stream through a DataLoader; "
                             "auto: stream what is too big", switch=True)
    workers: int = setting(2, "DataLoader worker processes when streaming (0 = the main process)", low=0)


#: the options a loader may take (``loader.options``), with their defaults (:class:`DataOptions`)
OPTION_DEFAULTS = defaults(DataOptions)


def is_image_dataset(name: str) -> bool:
    """Whether ``name`` holds images (intensities in [0, 1] that may be binarized)."""
    return not getattr(DATASETS.get(name), "real_valued", False)


def _check_args(name: str, split: str, binarize: str, subset: int) -> None:
    DATASETS.get(name)
    one_of("split", split, SPLITS)
    one_of("binarize", binarize, BINARIZE_MODES)
    if binarize != "none" and not is_image_dataset(name):
        raise ConfigError(f"binarize={binarize!r} needs an image data set; {name!r} is real-valued")
    if isinstance(subset, bool) or not isinstance(subset, numbers.Integral) or subset < 0:
        raise ConfigError(f"subset must be an integer >= 0 (0 = all); got {subset!r}")


def _check_subset(name: str, split: str, subset: int, n: int) -> None:
    """``subset`` may not exceed the split's size ``n`` (in a config: data.subset / data.test_subset)."""
    if subset > n:
        key = "data.test_subset" if split == "test" else "data.subset"
        raise ConfigError(f"subset={subset} is larger than the {split} split of {name!r} ({n} examples): "
                          f"use at most {n}, or 0 for all ({key} in a config)")


def _options_for(name: str, loader, options: dict) -> dict:
    """The options ``loader`` takes (``loader.options``), defaults filled in; ConfigError for one it
    does not take that was set (e.g. ``data.path`` with ``dataset = "mnist"``)."""
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown data option(s) {unknown}; allowed: {', '.join(OPTION_DEFAULTS)}")
    takes = getattr(loader, "options", ())
    for key, value in options.items():
        if key not in takes and value != OPTION_DEFAULTS[key]:
            readers = [n for n in DATASETS.names() if key in getattr(DATASETS.get(n), "options", ())]
            raise ConfigError(f"data.{key} is read by data set(s) {', '.join(map(repr, readers))}; {name!r} does "
                              f"not read it (got data.{key} = {value!r}): set data.dataset, or leave data.{key} out")
    return {key: options.get(key, OPTION_DEFAULTS[key]) for key in takes}


def _as_source(name: str, loaded) -> tuple[Source, int | None, dict | None]:
    """(source, bits, params) of a loader's result; an old-style ``(x, labels, params)`` wraps its
    float ``x`` (``bits`` then from ``loader.bits``: 8 for the MNIST family and Frey Face)."""
    if isinstance(loaded, Source):
        return loaded, loaded.examples.bits, None
    x, labels, params = loaded
    source = Source(TensorExamples(x, None, name), torch.arange(len(x)), labels)
    return source, getattr(DATASETS.get(name), "bits", None), params


def _check_binarizable(name: str, source: Source, binarize: str) -> None:
    span = source.examples.value_range
    if binarize != "none" and span is not None and not (0 <= span[0] and span[1] <= 1):
        raise ConfigError(f"binarize={binarize!r} needs values in [0, 1]; {source.examples.where} holds values in "
                          f"[{span[0]:.4g}, {span[1]:.4g}]: set binarize to 'none' (data.binarize in a config)")


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    binarize: str = "none",
    subset: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    in_memory: bool | str = "auto",
    workers: int = 2,
    **options,
) -> DataSplit | StreamingSplit:
    """Load one split of ``name`` (one of :data:`DATASETS`) as a :class:`DataSplit` on ``device``,
    or as a :class:`~pyrovae.data.streaming.StreamingSplit` that streams to it.

    ``binarize``: ``"none" | "static" | "dynamic"`` (image sets only; see the module doc).
    ``subset``: keep the first ``subset`` examples (0 = all; an integer no larger than the
    split), taken after binarization so a subset is a prefix of the full set.  ``seed``: seeds
    the synthetic sets and the dynamic per-epoch draws.  ``in_memory``: True keeps the split as
    one tensor on ``device``, False streams it (``workers`` DataLoader processes), ``"auto"``
    streams only what would take more than half the device's free memory
    (:func:`~pyrovae.data.streaming.keep_in_memory`).  ``options``: ``path``, ``key``,
    ``label_key``, ``image_size``, ``channels``, ``test_fraction``, ``split_seed`` for the sets
    that read them (``folder``, ``arrays``; :data:`OPTION_DEFAULTS`).  Raises ConfigError (a
    ValueError) on a bad argument, DataNotFoundError when the data dir or its files are missing,
    DataError when a file is corrupt or truncated or holds the wrong kind of data.
    """
    _check_args(name, split, binarize, subset)
    StreamOptions(in_memory=in_memory, workers=workers)
    workers = check_workers(workers)
    loader = DATASETS.get(name)
    loaded = loader(split, resolve_data_dir(data_dir), seed, **_options_for(name, loader, options))
    source, bits, params = _as_source(name, loaded)
    _check_subset(name, split, subset, len(source))
    _check_binarizable(name, source, binarize)
    mode = stored_mode(binarize, split)
    bits = 1 if binarize != "none" else bits
    kept = source.prefix(subset or len(source))
    identity = fingerprint(kept)
    if not keep_in_memory(in_memory, kept.nbytes, device):
        source = kept
        return StreamingSplit(source.examples, source.index, source.labels, name, split, mode, seed, params, bits,
                              source.note, workers, fingerprint=identity).to(device)
    x = to_float(materialize(source, workers), source.examples.bits)
    labels = source.labels
    if mode == "static":
        x = binarize_once(x, split)
    if subset:
        x, labels = x[:subset].clone(), None if labels is None else labels[:subset].clone()
    data = DataSplit(x, labels, name, split, mode, seed, params, bits, source.note, identity)
    return data.to(device)


def load_splits(name: str, **kwargs) -> tuple[DataSplit, DataSplit]:
    """``(train, test)``: :func:`load_dataset` for both splits with the same keyword arguments."""
    return load_dataset(name, "train", **kwargs), load_dataset(name, "test", **kwargs)
