"""Writing files so that a crash never leaves a partial one behind."""

from __future__ import annotations

import contextlib
import glob
import os
import stat
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
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=directory)
    except OSError as e:
        raise CharrnnError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            _set_mode(f.fileno(), path)
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


def _temp_prefix(name: str) -> str:
    return f".{name}."


def remove_stale_temp_files(directory: str | os.PathLike, names) -> list[Path]:
    """Delete the temporary files that an atomic write of one of names into directory
    leaves behind when the process is killed before its rename (never the files
    themselves). Returns what was removed."""
    removed = []
    for name in names:
        for tmp in Path(directory).glob(f"{glob.escape(_temp_prefix(name))}*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def locked_directory(directory: str | os.PathLike, busy: str):
    """Hold an exclusive lock on directory for the with block, or raise
    CharrnnError(busy) if another open descriptor holds it (another process, or
    another block of this one). The lock is flock(2) on the directory itself, so it
    leaves no file behind, and the kernel drops it when the process ends, however it
    ends: a killed run leaves no stale lock. Yields the locked descriptor; None where
    there is no flock (Windows) or the file system refuses it for a directory (NFS
    may: its emulation wants a file open for writing), and then nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield None
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as e:
        raise CharrnnError(f"cannot open {directory}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:  # held by someone else
            raise CharrnnError(busy) from None
        except OSError:  # no lock here; better unguarded than refusing every run
            locked = False
        yield fd if locked else None
    finally:
        os.close(fd)  # which drops the lock


def _set_mode(fd: int, path: Path) -> None:
    """Give the temporary file (created 0600) the mode the file would have had from a
    plain open(): the old file's mode when replacing one, else 0666 less the umask."""
    if not hasattr(os, "fchmod"):
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.fchmod(fd, mode)


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
