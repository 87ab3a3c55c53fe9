"""Where data files are read from, and the cache they are extracted into.

Real data is read from the *data dir* (:func:`resolve_data_dir`: ``--data-dir``, else
``$PYROVAE_DATA_DIR``, else ``~/.cache/pyrovae``) and never written there; its files are
extracted into :func:`cache_dir` by :func:`extract_sources`. ``PYROVAE_OFFLINE=1`` forbids any
download attempt.

What is checked (every failure is a :class:`~pyrovae.errors.DataError` of one line naming the file
and what to do):

* a compressed source: its md5 (torchvision's ``resources``), and that it gunzips to the end;
* every extracted file, before it is renamed into the cache: an idx header of unsigned bytes and a
  size equal to ``4 + 4 * ndim + prod(dims)``, so a bad source never publishes a cache entry;
* a cache entry, each time it is used: the same header and size check, and its *key* (each
  source's absolute path, size and ``mtime_ns``, in the entry's ``key.json``). Each set of
  sources has an entry of its own, a folder ``<cache>/by-source/<hash of the key>``, built in a
  staging folder and published whole by one rename; it is never changed afterwards, so processes
  sharing one cache (other data dirs, changed sources) never read each other's files or half of one.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
import zlib
from pathlib import Path

from ..errors import DataError, DataNotFoundError
from ..files import atomic_write

ENTRIES_FOLDER = "by-source"  # in the cache: one folder per set of sources, named by the hash of their key
ENTRY_KEY = "key.json"  # in an entry: the key it was built from
_BLOCK = 1 << 20


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var, "")
    return Path(value).expanduser() if value else default


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the raw data: ``data_dir``, else ``$PYROVAE_DATA_DIR``, else ``~/.cache/pyrovae``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return _env_path("PYROVAE_DATA_DIR", default_data_dir())


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


def default_data_dir() -> Path:
    return Path.home() / ".cache" / "pyrovae"


def require_data_dir(data_dir: Path, expected: list[str]) -> None:
    """Raise :class:`DataNotFoundError` unless ``data_dir`` is a directory (whatever the cache holds).

    The default data dir (``~/.cache/pyrovae``, used when none is set) may be missing: then
    torchvision may download into the cache, as on a first use.
    """
    if data_dir == default_data_dir() and not data_dir.exists():
        return
    if not data_dir.is_dir():
        what = "does not exist" if not data_dir.exists() else "is not a directory"
        raise DataNotFoundError(
            f"data directory {data_dir} {what}: set --data-dir or PYROVAE_DATA_DIR to the folder holding "
            f"{', '.join(expected)} (an existing empty folder lets torchvision download into the cache)")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_md5(path: Path, md5: str) -> None:
    found = _md5(path)
    if found != md5:
        raise DataError(f"data file {path} is corrupt (md5 {found}, expected {md5}): replace it with an intact "
                        f"copy (download it again)")


# ----------------------------------------------------------------------------- idx files


def idx_problem(head: bytes, size: int, name: str = "") -> str:
    """What is wrong with an idx file of ``size`` bytes starting with ``head`` (its first 20 bytes), or ''.

    Checked: the magic number ``00 00 08 ndim`` (unsigned bytes, ndim in 1..4, and the ndim in
    ``name`` when it reads ``...-idx<ndim>-...``) and ``size == 4 + 4 * ndim + prod(dims)``.
    """
    if len(head) < 4 or head[:3] != b"\0\0\x08" or not 1 <= head[3] <= 4:
        return "no idx header of unsigned bytes"
    ndim = head[3]
    named = re.search(r"-idx(\d)-", name)
    if named and int(named.group(1)) != ndim:
        return f"{ndim} dimensions in its header, {named.group(1)} in its name"
    if len(head) < 4 + 4 * ndim:
        return f"{size} bytes, shorter than its header"
    dims = struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + math.prod(dims)
    if size != expected:
        return f"{size} bytes where its header (dims {list(dims)}) implies {expected}"
    return ""


def _file_problem(path: Path) -> str:
    with open(path, "rb") as f:
        return idx_problem(f.read(20), os.fstat(f.fileno()).st_size, path.name)


def _read(inp, n: int, src: Path) -> bytes:
    """``inp.read(n)``; a truncated or corrupt gzip stream becomes a :class:`DataError` naming ``src``."""
    try:
        return inp.read(n)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"data file {src} is truncated or corrupt ({type(err).__name__}: {err}): replace it with "
                        f"an intact copy (download it again)") from err


def copy_verified(src: Path, dst: Path) -> None:
    """Copy ``src`` (gunzipping a ``.gz``) to ``dst`` through :func:`pyrovae.files.atomic_write`,
    checking the copy with :func:`idx_problem` before it is renamed to ``dst``: nothing appears at
    ``dst`` unless the whole of ``src`` was read and is a complete idx file."""
    opener = gzip.open if src.suffix == ".gz" else open
    with atomic_write(dst, "wb") as out, opener(src, "rb") as inp:
        head = _read(inp, 20, src)
        out.write(head)
        while block := _read(inp, _BLOCK, src):
            out.write(block)
        problem = idx_problem(head, out.tell(), dst.name)
        if problem:
            raise DataError(f"data file {src} is not a complete idx file ({problem}): replace it with an intact "
                            f"copy (download it again)")


# ----------------------------------------------------------------------------- cache entries


def source_key(src: Path) -> dict:
    """What a cache entry is keyed on, per source: its absolute path, size and modification time (ns)."""
    st = src.stat()
    return {"source": str(src.absolute()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_key(key_file: Path) -> dict | None:
    try:
        return json.loads(key_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def find_sources(expected: list[tuple[str, str]], data_dir: Path) -> dict | None:
    """``{rel: (source, md5)}`` for each ``(rel_gz, md5)`` of ``expected`` (``rel`` = ``rel_gz``
    without ``.gz``; the source is ``data_dir/rel_gz`` or ``data_dir/rel``); None if one is missing."""
    found = {}
    for rel_gz, md5 in expected:
        rel = rel_gz.removesuffix(".gz")
        src = next((p for p in (data_dir / rel_gz, data_dir / rel) if p.is_file()), None)
        if src is None:
            return None
        found[rel] = (src, md5)
    return found


def entry_path(key: dict, cache: Path) -> Path:
    """The keyed folder of the entry built from the sources ``key`` describes: ``cache/by-source/<hash>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache / ENTRIES_FOLDER / digest


def entry_ok(entry: Path, key: dict) -> bool:
    """Whether ``entry`` is a published entry of ``key``: its ``key.json`` equals it and every file
    passes :func:`idx_problem`."""
    return _read_key(entry / ENTRY_KEY) == key and all(
        (entry / rel).is_file() and not _file_problem(entry / rel) for rel in key)


def publish(staging: Path, entry: Path) -> bool:
    """Rename the complete folder ``staging`` to ``entry`` in one step (``os.rename``: readers see no
    entry or a whole one); False, leaving ``staging`` in place, when ``entry`` already exists (another
    process published the same sources first: its entry is used)."""
    try:
        os.rename(staging, entry)
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
            raise
        return False
    return True


def discard(entry: Path) -> None:
    """Remove a damaged entry: renamed aside first (no reader finds half of it), then deleted."""
    aside = entry.with_name(f".{entry.name}.{os.getpid()}.{time.monotonic_ns()}.discard")
    try:
        os.rename(entry, aside)
    except FileNotFoundError:
        return  # another process discarded it
    shutil.rmtree(aside, ignore_errors=True)


def build_entry(sources: dict, key: dict, cache: Path) -> Path:
    """The entry of ``sources`` (:func:`find_sources`), built in a staging folder of the cache (md5
    of each ``.gz`` source, then :func:`copy_verified`, then ``key.json``) and published by
    :func:`publish`; nothing of it appears in the cache if a source is bad."""
    entry = entry_path(key, cache)
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".staging", dir=entry.parent))
    try:
        for rel, (src, md5) in sources.items():
            if src.suffix == ".gz":
                _check_md5(src, md5)
            copy_verified(src, staging / rel)
        with atomic_write(staging / ENTRY_KEY, "w") as f:
            json.dump(key, f)
        publish(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def extract_sources(expected: list[tuple[str, str]], data_dir: Path, cache: Path) -> Path | None:
    """The folder holding checked copies of the files ``expected`` (``(rel_gz, md5)`` pairs) of
    ``data_dir``, each at ``<folder>/<rel_gz without .gz>``; None if the data dir lacks one.

    The folder is the cache entry keyed on every source (:func:`source_key`, hashed into its
    name by :func:`entry_path`): another data dir, or a changed source, has an entry of its own.
    An entry is written once, in a staging folder, and published whole (:func:`publish`); it is
    never changed afterwards, so a reader needs no lock. An entry that fails :func:`entry_ok`
    (damaged on disk) is discarded and rebuilt.
    """
    sources = find_sources(expected, data_dir)
    if sources is None:
        return None
    key = {rel: source_key(src) for rel, (src, _) in sources.items()}
    entry = entry_path(key, cache)
    if entry_ok(entry, key):
        return entry
    if entry.exists():
        discard(entry)
    return build_entry(sources, key, cache)


def downloaded(expected: list[tuple[str, str]], cache: Path) -> bool:
    """Whether ``cache`` itself holds every file ``expected`` as torchvision's download leaves it
    (unkeyed, at ``cache/<rel>``), each passing :func:`idx_problem`; a file that fails is removed so
    a download may replace it."""
    ok = True
    for rel_gz, _ in expected:
        dst = cache / rel_gz.removesuffix(".gz")
        if not (dst.is_file() and not _file_problem(dst)):
            dst.unlink(missing_ok=True)
            ok = False
    return ok
