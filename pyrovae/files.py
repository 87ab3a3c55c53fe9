"""Writing files so that a crash or a kill never leaves half of one.

:func:`atomic_write` writes through a fresh temporary file in the target's folder (created with
``O_EXCL`` by :func:`tempfile.mkstemp`, so it never follows a planted link), flushes it to disk,
then renames it over the target (``os.replace`` is atomic): readers see the old file or the new
one. On any error the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the mode an ordinary ``open(path, "w")`` gives a new file
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path: Union[str, os.PathLike], mode: str = "w") -> Iterator[IO]:
    """``with atomic_write(path, "wb") as f: ...`` — ``path`` appears whole when the block ends.

    A target that exists and is not a regular file or a link (``/dev/null``, a pipe) is written
    in place: there is nothing to replace atomically, and replacing it would be wrong.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_symlink():
        with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp's 0600 would otherwise stay with the renamed file
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        with _naming(path):
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError of the block (about the temporary file) raised again naming ``path``, the file
    the user asked for (a read-only folder, a folder where the file should be)."""
    try:
        yield
    except OSError as err:
        if err.errno is None:
            raise
        raise type(err)(err.errno, err.strerror, str(path)) from None


def write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


#: the characters :func:`tempfile.mkstemp` draws its 8 random characters from
_TEMP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def temporary_of(name: str, targets) -> bool:
    """Whether ``name`` is a temporary file :func:`atomic_write` (or a probe made the same way) left
    for one of ``targets``: ``.<target>.<8 characters of mkstemp>.tmp``. Nothing else a folder
    holds matches, so only pyrovae's own temporaries are ever removed as orphans."""
    for target in targets:
        prefix = f".{target}."
        middle = name[len(prefix):-len(".tmp")] if name.startswith(prefix) and name.endswith(".tmp") else ""
        if len(middle) == 8 and set(middle) <= _TEMP_CHARS:
            return True
    return False


#: the folders this process holds (:func:`lock_folder`): path -> the open descriptor the lock lives on
_HELD: dict = {}


def lock_folder(folder: Union[str, os.PathLike]) -> bool:
    """Hold ``folder`` (``fcntl.flock``, exclusive, on the folder itself: no lock file is written)
    until :func:`unlock_folder` or the end of this process; True if held now (again, if this
    process already held it), False if another process holds it. The operating system releases
    the lock of a process that dies, so a killed run never leaves a stale lock."""
    import fcntl

    key = str(Path(folder).resolve())
    if key in _HELD:
        return True
    fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _HELD[key] = fd
    return True


def unlock_folder(folder: Union[str, os.PathLike]) -> None:
    """Release the lock :func:`lock_folder` took (nothing if this process holds none)."""
    fd = _HELD.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)
