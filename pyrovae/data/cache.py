"""Where data files are read from, and the cache they are extracted into.

Real data is read from the *data dir* (:func:`resolve_data_dir`: ``--data-dir``, else
``$PYROVAE_DATA_DIR``, else ``~/.cache/pyrovae``) and never written there; compressed files are
checked against their md5 and extracted, through a temporary file and an atomic rename, into
:func:`cache_dir`. ``PYROVAE_OFFLINE=1`` forbids any download attempt.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

from ..errors import DataNotFoundError
from ..files import atomic_write


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


def offline() -> bool:
    return os.environ.get("PYROVAE_OFFLINE", "").lower() in ("1", "true", "yes")


def not_found(data_dir: Path, expected: list[str], why: str) -> DataNotFoundError:
    """One line: the directory, the exact files expected in it, why no download, what to do."""
    unzipped = " (or the same without .gz)" if any(name.endswith(".gz") for name in expected) else ""
    return DataNotFoundError(
        f"data files not found in the data directory {data_dir}: expected {', '.join(expected)}{unzipped} "
        f"there. {why.strip().rstrip('.')}. Set --data-dir or PYROVAE_DATA_DIR to the folder that holds them."
    )


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


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (gunzipping a ``.gz`` src) through :func:`pyrovae.files.atomic_write`."""
    opener = gzip.open if src.suffix == ".gz" else open
    with atomic_write(dst, "wb") as out, opener(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


def extract_raw(gz_name: str, md5: str, src_dir: Path, dst_dir: Path) -> bool:
    """Put the unzipped ``gz_name`` into ``dst_dir`` from ``src_dir``; False if src lacks it."""
    dst = dst_dir / gz_name.removesuffix(".gz")
    gz, plain = src_dir / gz_name, src_dir / dst.name
    if dst.exists():
        return True
    if gz.exists():
        _check_md5(gz, md5)
        atomic_copy(gz, dst)
    elif plain.exists():
        atomic_copy(plain, dst)
    return dst.exists()
