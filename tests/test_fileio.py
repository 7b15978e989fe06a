import os
import stat

import pytest

import charrnn.fileio as fileio
from charrnn.errors import CharrnnError
from charrnn.fileio import atomic_write_bytes, remove_stale_temp_files


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path):
    umask = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "new", b"data")
    finally:
        os.umask(umask)
    assert mode(tmp_path / "new") == 0o640  # 0666 less the umask, not mkstemp's 0600


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o604)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o604


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, error):
    path = tmp_path / "last.safetensors"
    path.write_bytes(b"old complete file")

    def fail(fd):
        raise error

    monkeypatch.setattr(fileio.os, "fsync", fail)
    expected = CharrnnError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected, match="No space left" if expected is CharrnnError else None):
        atomic_write_bytes(path, b"new data that never lands")
    assert path.read_bytes() == b"old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_stale_temporaries_of_the_named_files_are_removed_and_nothing_else(tmp_path):
    keep = ["last.safetensors", ".last.safetensors.abc.tmp.keep", ".other.abc.tmp", "notes.tmp"]
    stale = [".last.safetensors.k2j3h.tmp", ".metrics.jsonl.x_1.tmp"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"")
    removed = remove_stale_temp_files(tmp_path, ["last.safetensors", "best.safetensors", "metrics.jsonl"])
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_unwritable_target_is_a_one_line_error(tmp_path):
    with pytest.raises(CharrnnError, match="cannot write .*missing"):
        atomic_write_bytes(tmp_path / "missing" / "f", b"x")


fcntl = pytest.importorskip("fcntl", reason="the run lock is flock(2), which this platform lacks")


def test_a_directory_lock_is_exclusive_until_released_and_leaves_no_file(tmp_path):
    from charrnn.fileio import locked_directory

    with locked_directory(tmp_path, "busy") as held:
        assert held is not None
        with pytest.raises(CharrnnError, match="^busy$"):
            with locked_directory(tmp_path, "busy"):  # another descriptor, as another process would hold
                pass
    with locked_directory(tmp_path, "busy"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_that_refuses_flock_gets_no_lock_rather_than_a_refusal(tmp_path, monkeypatch):
    import errno

    from charrnn.fileio import locked_directory

    def refuse(fd, operation):  # NFS's emulation on a directory opened read-only
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with locked_directory(tmp_path, "busy") as held:
        assert held is None
