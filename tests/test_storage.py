"""A full disk mid-run: a clean stop (exit 74, one sentence, no temporary files, the log marked
``interrupted`` where there is room to write it), and once space is back, a resume whose numbers
are bit-identical to an uninterrupted run.

The run's folder is a small tmpfs when this machine lets us mount one (root, or an unprivileged user
and mount namespace); otherwise its writes are made to fail by lowering the run's file-size limit
(``prlimit``), which the run meets as an ``EFBIG`` write error.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
from test_kill import RUN, wait_for
from test_resume import assert_same_run

from bioplaus.log import read_run

pytestmark = pytest.mark.slow  # end-to-end: processes, whole runs (see tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--variant", "predsim", "--num-layers", "1", "--num-hidden", "64", "--device", "cpu", "--no-progress",
        "--epochs", "3"]  # no probe: the log stays much smaller than the checkpoint


def start(out: str, pause: str, preexec_fn=None) -> subprocess.Popen:
    env = dict(os.environ, BIOPLAUS_TEST_PAUSE_AFTER_LOG=pause, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, RUN, *TINY, "--out", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT, preexec_fn=preexec_fn)  # noqa: PLW1509 -- no threads here


def _mount_tmpfs(path: str, size: str) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True,
                          check=False)
    return proc.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 16 MiB tmpfs (None when no tmpfs can be mounted here)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if not _mount_tmpfs(str(folder), "16m"):
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder, leave: int) -> str:
    """Fill the file system of ``folder`` until ``leave`` bytes are free; returns the filler's path."""
    filler = os.path.join(folder, "filler")
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def _reference(tmp_path) -> str:
    out = str(tmp_path / "ref.h5")
    proc = subprocess.run([sys.executable, RUN, *TINY, "--out", out], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def _finish(proc, out):
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.strip().splitlines() if line]
    assert proc.returncode == 74, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert f"resume with: python {RUN} --resume {out}" in lines[0]  # the command as the test typed it
    folder = os.path.dirname(out)
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")], os.listdir(folder)
    return lines[0]


@pytest.mark.parametrize("room_for_the_log", [True, False])
def test_disk_full_then_resume(tmp_path, small_disk, room_for_the_log):
    if small_disk is None:
        pytest.skip("no tmpfs can be mounted here (test_file_size_limit covers the same path)")
    reference = _reference(tmp_path)
    out = str(small_disk / "run.h5")
    proc = start(out, pause="6@2")
    wait_for(proc, "logged epoch 2")  # epoch 2 is in the log; its checkpoint is next
    log_size = os.path.getsize(out)
    ckpt_size = os.path.getsize(out + ".ckpt.npz")
    assert ckpt_size > 2 * log_size + 200_000  # the scenario needs a checkpoint larger than the log
    filler = _fill(small_disk, leave=(2 * log_size + 128_000) if room_for_the_log else 8_000)
    line = _finish(proc, out)
    assert "no space left" in line and "after epoch 2" in line
    run = read_run(out)
    assert run.num_epochs == 2  # nothing completed is lost (epoch 2 is recomputed on resume)
    assert run.status == "interrupted"  # with no room for a new copy of the log, its status is rewritten in place
    if room_for_the_log:
        assert "no space left" in run.attrs["message"]
    else:
        assert "could not be updated" not in line
    os.unlink(filler)  # space is back
    done = subprocess.run([sys.executable, RUN, "--resume", out, "--no-progress"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    ref_copy = str(small_disk / "ref.h5")  # compare in one place (assert_same_run reads the checkpoints too)
    shutil.copy(reference, ref_copy)
    shutil.copy(reference + ".ckpt.npz", ref_copy + ".ckpt.npz")
    assert_same_run(ref_copy, out)


def test_file_size_limit(tmp_path):
    """Writes that fail with EFBIG (a file-size limit lowered mid-run): the same clean stop and resume."""
    if not hasattr(resource, "prlimit"):
        pytest.skip("prlimit is Linux-only")
    reference = _reference(tmp_path)
    out = str(tmp_path / "run.h5")

    def ignore_sigxfsz():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG

    proc = start(out, pause="6@2", preexec_fn=ignore_sigxfsz)
    wait_for(proc, "logged epoch 2")
    limit = 4096  # smaller than the checkpoint and the log: every further write fails
    with contextlib.suppress(PermissionError):
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
    line = _finish(proc, out)
    assert "after epoch 2" in line and ("disk failed" in line or "no space" in line), line
    assert read_run(out).num_epochs == 2
    done = subprocess.run([sys.executable, RUN, "--resume", out, "--no-progress"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert_same_run(reference, out)
