"""Data sets for pyrovae, each held as one tensor on one device.

Every loader returns a :class:`DataSplit` whose ``x`` has shape ``[N, *shape]``:

========================  ===============  ======================================  ========
name                      ``shape``        units of ``x``                          labels
========================  ===============  ======================================  ========
``mnist``                 ``[28, 28]``     float32 intensities in [0, 1]           0..9
``fashion-mnist``         ``[28, 28]``     float32 intensities in [0, 1]           0..9
``kmnist``                ``[28, 28]``     float32 intensities in [0, 1]           0..9
``frey``                  ``[28, 20]``     float32 intensities in [0, 1]           None
``ppca``                  ``[obs_dim]``    float32, real-valued (default 5)        None
``toy``                   ``[1]``          float32, real-valued                    None
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
    ``<data dir>/FreyFace/frey_rawface.mat``.

Splits
    MNIST-style sets keep their official 60000/10000 train/test split.  Frey Face has none:
    a permutation of its 1965 faces drawn with ``torch.Generator().manual_seed(0)``
    (``torch.randperm``) gives the train set (its first 1765 indices, in that order) and the
    test set (its last 200).  The synthetic sets draw 5000 + 1000 examples in one call and
    split them in that order, so both splits share one generating model.

Binarization (``binarize``)
    ``"none"``: grey levels as they are.  ``"static"``: one ``torch.bernoulli`` draw at load
    time with a fixed seed (0 for train, 1 for test).  ``"dynamic"``: a fresh draw every epoch
    (:meth:`DataSplit.epoch`), seeded by ``(seed, epoch)``.  The test set is always binarized
    once with its fixed seed when ``binarize != "none"``, for ``"dynamic"`` too.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

BINARIZE_MODES = ("none", "static", "dynamic")
SPLITS = ("train", "test")
FIXED_BINARIZE_SEED = {"train": 0, "test": 1}  # the seed of each split's one-off binarization
FREY_FILE = "FreyFace/frey_rawface.mat"
FREY_SHAPE = (28, 20)
FREY_N = 1965
FREY_SPLIT_SEED = 0
FREY_N_TEST = 200
SYNTHETIC_SIZES = {"train": 5000, "test": 1000}
_SHUFFLE_STREAM, _BINARIZE_STREAM = 0, 1


class DataNotFoundError(FileNotFoundError):
    """The files of a data set are not in the data dir (and could not be downloaded)."""


# ----------------------------------------------------------------------------- locations


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var, "")
    return Path(value).expanduser() if value else default


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the raw data: ``data_dir``, else ``$PYROVAE_DATA_DIR``, else ``~/.cache/pyrovae``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return _env_path("PYROVAE_DATA_DIR", Path.home() / ".cache" / "pyrovae")


def cache_dir() -> Path:
    """The folder extracted files go to: ``$PYROVAE_CACHE_DIR``, else ``~/.cache/pyrovae/extracted``."""
    return _env_path("PYROVAE_CACHE_DIR", Path.home() / ".cache" / "pyrovae" / "extracted")


def _offline() -> bool:
    return os.environ.get("PYROVAE_OFFLINE", "").lower() in ("1", "true", "yes")


def _not_found(data_dir: Path, expected: list[str], why: str) -> DataNotFoundError:
    """One line: the directory, the exact files expected in it, why no download, what to do."""
    unzipped = " (or the same without .gz)" if any(name.endswith(".gz") for name in expected) else ""
    return DataNotFoundError(
        f"data files not found in the data directory {data_dir}: expected {', '.join(expected)}{unzipped} "
        f"there. {why.strip().rstrip('.')}. Set --data-dir or PYROVAE_DATA_DIR to the folder that holds them."
    )


# ----------------------------------------------------------------------------- files


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_md5(path: Path, md5: str) -> None:
    found = _md5(path)
    if found != md5:
        raise RuntimeError(f"{path} is corrupt: md5 {found}, expected {md5}")


def _atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (gunzipping a ``.gz`` src) via a temp file and ``os.replace``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if src.suffix == ".gz" else open
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, opener(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _extract_raw(gz_name: str, md5: str, src_dir: Path, dst_dir: Path) -> bool:
    """Put the unzipped ``gz_name`` into ``dst_dir`` from ``src_dir``; False if src lacks it."""
    dst = dst_dir / gz_name.removesuffix(".gz")
    gz, plain = src_dir / gz_name, src_dir / dst.name
    if dst.exists():
        return True
    if gz.exists():
        _check_md5(gz, md5)
        _atomic_copy(gz, dst)
    elif plain.exists():
        _atomic_copy(plain, dst)
    return dst.exists()


# ----------------------------------------------------------------------------- MNIST family


def _torchvision_class(class_name: str) -> type:
    import torchvision.datasets

    return getattr(torchvision.datasets, class_name)


def _try_download(cls: type, root: Path) -> str:
    """Let torchvision download ``cls`` into ``root``; returns what went wrong ('' if nothing)."""
    if _offline():
        return "Download skipped: PYROVAE_OFFLINE is set."
    try:
        cls(root=str(root), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not available"
        return f"Download into {root} failed too: {type(err).__name__}: {err}"
    return ""


def _prepare_mnist_files(cls: type, data_dir: Path, root: Path) -> None:
    """Extract ``cls``'s raw files from ``data_dir`` into ``root``, else download them there."""
    raw = f"{cls.__name__}/raw"
    extracted = [_extract_raw(f, md5, data_dir / raw, root / raw) for f, md5 in cls.resources]
    if all(extracted):
        return
    why = _try_download(cls, root)
    if why:
        expected = [f"{raw}/{f}" for f, _ in cls.resources]
        raise _not_found(data_dir, expected, why)


def load_mnist_like(class_name: str, split: str, data_dir: Path) -> tuple[Tensor, Tensor]:
    """``torchvision.datasets.<class_name>`` split: x float32 ``[N, 28, 28]`` in [0, 1], labels int64 ``[N]``."""
    cls, root = _torchvision_class(class_name), cache_dir()
    _prepare_mnist_files(cls, data_dir, root)
    ds = cls(root=str(root), train=split == "train", download=False)
    return ds.data.float().div_(255.0), ds.targets.long()


# ----------------------------------------------------------------------------- Frey Face


def frey_split_indices(split: str) -> Tensor:
    """Indices into the 1965 faces: a ``manual_seed(0)`` randperm; first 1765 train, last 200 test."""
    _check_choice("split", split, SPLITS)
    perm = torch.randperm(FREY_N, generator=torch.Generator().manual_seed(FREY_SPLIT_SEED))
    n_train = FREY_N - FREY_N_TEST
    return perm[:n_train] if split == "train" else perm[n_train:]


def load_frey(data_dir: Path) -> Tensor:
    """All Frey faces: float32 ``[1965, 28, 20]`` in [0, 1] (``ff`` column k, row-major, / 255)."""
    path = data_dir / FREY_FILE
    if not path.exists():
        raise _not_found(data_dir, [FREY_FILE], "No such file.")
    from scipy.io import loadmat

    ff = loadmat(path)["ff"]  # [560, 1965] uint8
    return torch.from_numpy(ff.T.reshape(-1, *FREY_SHAPE).copy()).float().div_(255.0)


# ----------------------------------------------------------------------------- synthetic


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


# ----------------------------------------------------------------------------- container


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

    def epoch(self, epoch: int) -> Tensor:
        """The data ``[N, *shape]`` for ``epoch``: for ``"dynamic"`` a fresh Bernoulli draw
        seeded by ``(seed, epoch)`` (so resumed runs repeat it), else the stored ``x``."""
        if self.binarize != "dynamic":
            return self.x
        g = _generator(self.device, _derived_seed(self.seed, epoch, _BINARIZE_STREAM))
        return torch.bernoulli(self.x, generator=g)

    def batches(
        self,
        batch_size: int,
        *,
        epoch: int,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[Tensor]:
        """Mini-batches ``[<=batch_size, *shape]`` of :meth:`epoch`, as index slices.

        The order is a ``torch.randperm`` on the data's device drawn with ``generator`` (which
        must live on that device); without one, with a generator seeded by ``(seed, epoch)``.
        The last batch may be smaller.
        """
        data, n = self.epoch(epoch), len(self)
        if generator is None:
            generator = _generator(self.device, _derived_seed(self.seed, epoch, _SHUFFLE_STREAM))
        order = torch.arange(n, device=self.device)
        if shuffle:
            order = torch.randperm(n, device=self.device, generator=generator)
        for start in range(0, n, batch_size):
            yield data.index_select(0, order[start : start + batch_size])


# ----------------------------------------------------------------------------- entry point

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


_LOADERS: dict[str, Callable[[str, Path, int], _Loaded]] = {
    "mnist": partial(_load_torchvision, "MNIST"),
    "fashion-mnist": partial(_load_torchvision, "FashionMNIST"),
    "kmnist": partial(_load_torchvision, "KMNIST"),
    "frey": _load_frey,
    "ppca": partial(_load_synthetic, ppca_data),
    "toy": partial(_load_synthetic, toy_data),
}
DATASETS = tuple(_LOADERS)
IMAGE_DATASETS = ("mnist", "fashion-mnist", "kmnist", "frey")


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _check_args(name: str, split: str, binarize: str, subset: int) -> None:
    _check_choice("dataset name", name, DATASETS)
    _check_choice("split", split, SPLITS)
    _check_choice("binarize", binarize, BINARIZE_MODES)
    if binarize != "none" and name not in IMAGE_DATASETS:
        raise ValueError(f"binarize={binarize!r} needs an image data set; {name!r} is real-valued")
    if subset < 0:
        raise ValueError(f"subset must be >= 0 (0 = all); got {subset}")


def _binarize_once(x: Tensor, split: str) -> Tensor:
    """One Bernoulli draw of ``x`` with the split's fixed seed (on the CPU)."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(FIXED_BINARIZE_SEED[split]))


def _stored_mode(binarize: str, split: str) -> str:
    """What is stored: the test set is binarized once even for ``"dynamic"``."""
    return "static" if binarize == "dynamic" and split == "test" else binarize


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    binarize: str = "none",
    subset: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> DataSplit:
    """Load one split of ``name`` (one of :data:`DATASETS`) as a :class:`DataSplit` on ``device``.

    ``binarize``: ``"none" | "static" | "dynamic"`` (image sets only; see the module doc).
    ``subset``: keep the first ``subset`` examples (0 = all), taken after binarization so a
    subset is a prefix of the full set.  ``seed``: seeds the synthetic sets and the dynamic
    per-epoch draws.  Raises ValueError on a bad argument, DataNotFoundError on missing files.
    """
    _check_args(name, split, binarize, subset)
    x, labels, params = _LOADERS[name](split, resolve_data_dir(data_dir), seed)
    mode = _stored_mode(binarize, split)
    if mode == "static":
        x = _binarize_once(x, split)
    if subset:
        x, labels = x[:subset].clone(), None if labels is None else labels[:subset].clone()
    data = DataSplit(x, labels, name, split, mode, seed, params)
    return data.to(device)


def load_splits(name: str, **kwargs) -> tuple[DataSplit, DataSplit]:
    """``(train, test)``: :func:`load_dataset` for both splits with the same keyword arguments."""
    return load_dataset(name, "train", **kwargs), load_dataset(name, "test", **kwargs)
