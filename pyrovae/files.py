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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp's 0600 would otherwise stay with the renamed file
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)
