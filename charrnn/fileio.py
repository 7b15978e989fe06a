"""Writing files so that a crash never leaves a partial one behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from charrnn.errors import CharrnnError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write data to path through a temporary file in the same directory, flushed to
    disk and renamed over the old file: at any moment path is either the old complete
    file or the new complete file."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise CharrnnError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CharrnnError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    _fsync_directory(directory)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
