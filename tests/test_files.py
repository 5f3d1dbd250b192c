"""A run's files: atomic writes that leave nothing behind and never truncate, the limits on a log's
name, the lock that excludes a second writer in another process, the free-space check, and the
clean-up of a killed writer's temporary files (ours only).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from bioplaus import files
from bioplaus.files import (
    LOCK_MARK,
    SPACE_MARGIN,
    PathError,
    RunLock,
    StorageFull,
    atomic_write,
    check_name,
    checkpoint_path,
    ensure_space,
    is_storage_failure,
    lock_path,
    remove_stale_temps,
)


class Boom(Exception):
    pass


# ------------------------------------------------------------------------------ atomic_write
def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "run.h5"
    atomic_write(target, lambda fh: fh.write(b"first"))
    atomic_write(str(target), lambda fh: fh.write(b"second"))
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["run.h5"]


def test_a_failed_write_leaves_no_temporary_file_and_the_old_file_whole(tmp_path):
    target = tmp_path / "run.h5"
    target.write_bytes(b"the user's results")
    seen = {}

    def write(fh):
        fh.write(b"half")
        seen["files"] = sorted(os.listdir(tmp_path))
        seen["during"] = target.read_bytes()  # the target is never opened for writing
        raise Boom

    with pytest.raises(Boom):
        atomic_write(target, write)
    assert seen["during"] == b"the user's results"
    assert target.read_bytes() == b"the user's results"
    assert os.listdir(tmp_path) == ["run.h5"]
    assert len(seen["files"]) == 2  # there was a temporary file, and it is gone


def test_a_failed_first_write_creates_nothing(tmp_path):
    def interrupted(fh):
        fh.write(b"x")
        raise KeyboardInterrupt  # however it fails (a Ctrl-C too)

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.h5", interrupted)
    assert os.listdir(tmp_path) == []


def test_the_temporary_file_is_fresh_and_beside_the_target(tmp_path):
    target = tmp_path / "run.h5"
    target.write_bytes(b"old")
    during = []
    atomic_write(target, lambda fh: during.extend(os.listdir(tmp_path)))
    (base,) = set(during) - {"run.h5"}  # exactly one new file, in the target's folder
    assert base.startswith(".run.h5.") and base.endswith(".tmp") and base != ".run.h5..tmp"
    assert os.listdir(tmp_path) == ["run.h5"] and target.read_bytes() == b""


def test_no_space_means_no_write_at_all(tmp_path, monkeypatch):
    target = tmp_path / "run.h5"
    target.write_bytes(b"old")
    monkeypatch.setattr(files, "free_bytes", lambda folder: 10_000)
    called = []
    with pytest.raises(StorageFull) as info:
        atomic_write(target, called.append, needed=10_000)
    assert called == [] and target.read_bytes() == b"old" and os.listdir(tmp_path) == ["run.h5"]
    assert info.value.errno == errno.ENOSPC and is_storage_failure(info.value)


# ------------------------------------------------------------------------------ ensure_space
def test_ensure_space_keeps_a_margin(tmp_path, monkeypatch):
    path = str(tmp_path / "run.h5")
    monkeypatch.setattr(files, "free_bytes", lambda folder: 5_000 + SPACE_MARGIN)
    ensure_space(path, 5_000)  # exactly enough
    with pytest.raises(StorageFull, match="no space left"):
        ensure_space(path, 5_001)
    monkeypatch.setattr(files, "free_bytes", lambda folder: None)  # unknown: the write goes ahead
    ensure_space(path, 2**62)


def test_ensure_space_on_the_real_file_system(tmp_path):
    free = files.free_bytes(str(tmp_path))
    assert free is not None and free > 0
    if free > SPACE_MARGIN:
        ensure_space(str(tmp_path / "run.h5"), 0)
    with pytest.raises(StorageFull):
        ensure_space(str(tmp_path / "run.h5"), free + 2**40)  # more than the disk holds


def test_storage_failures():
    assert is_storage_failure(OSError(errno.EDQUOT, "quota"))
    assert is_storage_failure(OSError(errno.EROFS, "read-only"))
    assert not is_storage_failure(OSError(errno.EACCES, "denied"))
    assert not is_storage_failure(ValueError("no"))


# ------------------------------------------------------------------------------ check_name
@pytest.mark.parametrize("path,match", [
    ("", "needs a file name"),
    ("   ", "needs a file name"),
    ("runs/a\0b.h5", "NUL"),
    ("runs/run.hdf5", r"must end in \.h5"),
    ("runs/run", r"must end in \.h5"),
    ("runs/.h5", r"has no name before \.h5"),
])
def test_check_name_refuses_bad_names(path, match):
    with pytest.raises(PathError, match=match):
        check_name(path, "--out")


def test_check_name_leaves_room_for_the_checkpoints_temporary_name(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = name_max - len(files._LONGEST_SUFFIX) - 1  # the longest log name a run can use here
    ok = "a" * (longest - 3) + ".h5"
    check_name(str(tmp_path / ok), "--out")
    too_long = "a" * (longest - 2) + ".h5"
    with pytest.raises(PathError, match=f"too long .*the limit here is {longest}"):
        check_name(str(tmp_path / too_long), "--out")
    # what a run makes beside its longest log fits the file system
    tmp_name = "." + os.path.basename(checkpoint_path(ok)) + ".abcdefgh.tmp"
    assert len(tmp_name) <= name_max
    (tmp_path / tmp_name).write_bytes(b"")


def test_check_name_refuses_a_path_too_long_for_the_file_system(tmp_path):
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX")
    deep = os.path.join(str(tmp_path), *(["d" * 200] * (path_max // 200 + 1)), "run.h5")  # folders need not exist
    with pytest.raises(PathError, match="too long for this file system"):
        check_name(deep, "--out")
    check_name(os.path.join(str(tmp_path), "x" * 100, "y" * 100, "run.h5"), "--out")


# ------------------------------------------------------------------------------ RunLock
def _in_another_process(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, check=False)


TRY_LOCK = """
    import sys
    from bioplaus.files import PathError, RunLock, check_not_running
    log = sys.argv[1] if len(sys.argv) > 1 else {log!r}
    try:
        check_not_running(log)
        print("free")
    except PathError as e:
        print("check:", e)
    try:
        RunLock(log).acquire()
        print("acquired")
    except PathError as e:
        print("lock:", e)
"""


@pytest.mark.skipif(files.fcntl is None, reason="no fcntl: no lock on this platform")
def test_run_lock_excludes_another_process_and_keeps_its_file(tmp_path):
    log = str(tmp_path / "run.h5")
    lock = RunLock(log).acquire()
    try:
        assert lock.created and os.path.exists(lock_path(log))
        r = _in_another_process(TRY_LOCK.format(log=log))
        assert r.returncode == 0, r.stderr
        out = r.stdout.splitlines()
        assert out[0] == f"check: {log} is being written by another running process; wait for it or stop it"
        assert out[1] == f"lock: {log} is being written by another running process; wait for it or stop it"
    finally:
        lock.release()
    with open(lock_path(log), "rb") as fh:
        assert fh.read() == LOCK_MARK  # kept, marked as ours
    r = _in_another_process(TRY_LOCK.format(log=log))
    assert r.stdout.splitlines() == ["free", "acquired"]
    assert os.path.exists(lock_path(log))  # the other process ended: its lock is gone, the file stays
    again = RunLock(log).acquire()
    assert again.created is False
    again.release()
    assert os.listdir(tmp_path) == ["run.h5.lock"]  # a lock makes nothing but its file


# ------------------------------------------------------------------------------ remove_stale_temps
def test_remove_stale_temps_removes_only_this_runs_temporary_files(tmp_path):
    log = str(tmp_path / "run.h5")
    ours = [".run.h5.k2j4h5g1.tmp", ".run.h5.ckpt.npz.a1b2c3d4.tmp"]
    kept = ["run.h5", "run.h5.ckpt.npz", "run.h5.lock", ".run.h5.k2j4h5g1", "run.h5.k2j4h5g1.tmp",
            ".other.h5.k2j4h5g1.tmp", ".run.h50.k2j4h5g1.tmp", "notes.tmp", ".bioplaus-probe.x.tmp"]
    for name in ours + kept:
        (tmp_path / name).write_bytes(b"data")
    (tmp_path / ".run.h5.folder00.tmp").mkdir()  # not a regular file: left alone
    os.symlink(tmp_path / "run.h5", tmp_path / ".run.h5.link0000.tmp")  # a link neither
    removed = remove_stale_temps(log)
    assert sorted(removed) == sorted(str(tmp_path / n) for n in ours)
    left = set(os.listdir(tmp_path))
    assert left == set(kept) | {".run.h5.folder00.tmp", ".run.h5.link0000.tmp"}
    assert (tmp_path / "run.h5").read_bytes() == b"data"  # the link's target untouched
    assert remove_stale_temps(log) == []
    assert remove_stale_temps(str(tmp_path / "missing" / "run.h5")) == []  # no folder: nothing to do


def test_make_folders_returns_what_it_made_and_undoes_it_on_a_failure(tmp_path, monkeypatch):
    made = files.make_folders(tmp_path / "a" / "b")
    assert made == [str(tmp_path / "a" / "b"), str(tmp_path / "a")] and (tmp_path / "a" / "b").is_dir()
    assert files.make_folders(tmp_path / "a" / "b") == []
    files.remove_folders(made)
    assert not (tmp_path / "a").exists()

    real_mkdir = os.mkdir

    def raced(path, *args):  # another process makes "x" between the look and the mkdir
        if os.path.basename(path) == "x":
            real_mkdir(path)
            raise FileExistsError(17, "File exists", path)
        if os.path.basename(path) == "bad":
            raise PermissionError(13, "Permission denied", path)
        return real_mkdir(path, *args)

    monkeypatch.setattr(os, "mkdir", raced)
    assert files.make_folders(tmp_path / "x" / "y") == [str(tmp_path / "x" / "y")]  # "x" is theirs
    with pytest.raises(PermissionError):
        files.make_folders(tmp_path / "new" / "bad" / "c")
    assert not (tmp_path / "new").exists()  # the folder it made before the failure is gone again
