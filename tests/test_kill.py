"""Kills: SIGKILL mid-epoch or between the log and checkpoint writes, SIGINT and SIGTERM.

After each, the log opens, holds every completed epoch, and --resume finishes the run with the
same numbers as an uninterrupted run.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resume import assert_same_run

from bioplaus.checkpoint import checkpoint_path, load_checkpoint
from bioplaus.log import read_run

pytestmark = pytest.mark.slow  # end-to-end: processes, whole runs (see tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "sims", "run.py")
TINY = ["--variant", "predsim", "--num-layers", "1", "--num-hidden", "32", "--device", "cpu", "--no-progress",
        "--epochs", "2", "--probe-every", "2"]


def start(out: str, pause: str = "", extra=()) -> subprocess.Popen:
    env = dict(os.environ, BIOPLAUS_TEST_PAUSE_AFTER_LOG=pause, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, RUN, *TINY, *extra, "--out", out], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def wait_for(proc: subprocess.Popen, marker: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"process ended before {marker!r}: {proc.stderr.read()}")
        if line.startswith(marker):
            return
    raise AssertionError(f"no {marker!r} within {timeout}s")


def resume(out: str) -> subprocess.CompletedProcess:
    return subprocess.run(check=False, args=[sys.executable, RUN, "--resume", out, "--no-progress"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "ref.h5")
    proc = subprocess.run(check=False, args=[sys.executable, RUN, *TINY, "--out", out], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("epoch", [1, 2])
def test_sigkill_between_log_and_checkpoint(tmp_path, reference, epoch):
    out = str(tmp_path / "run.h5")
    proc = start(out, pause=f"60@{epoch}")
    wait_for(proc, f"logged epoch {epoch}")  # the epoch is in the log, its checkpoint not yet written
    proc.kill()
    proc.wait(timeout=30)
    run = read_run(out)
    assert run.num_epochs == epoch and run.status == "running"
    if epoch == 1:
        assert not os.path.exists(checkpoint_path(out))  # resume starts over from initialisation
    else:
        assert load_checkpoint(checkpoint_path(out))[1]["epoch"] == epoch - 1
    done = resume(out)
    assert done.returncode == 0, done.stderr
    assert read_run(out).num_epochs == 2
    assert_same_run(reference, out)


def test_sigkill_mid_epoch(tmp_path, reference):
    out = str(tmp_path / "run.h5")
    proc = start(out, pause="0")
    wait_for(proc, "logged epoch 1")
    wait_for(proc, "epoch 1/2")  # epoch 1 checkpointed and printed: epoch 2 is training now
    proc.kill()
    proc.wait(timeout=30)
    run = read_run(out)
    assert run.status == "running" and run.num_epochs >= 1
    done = resume(out)
    assert done.returncode == 0, done.stderr
    assert_same_run(reference, out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_marks_log_and_resumes(tmp_path, reference, sig):
    out = str(tmp_path / "run.h5")
    proc = start(out, pause="0.5")
    wait_for(proc, "logged epoch 1")
    proc.send_signal(sig)  # arrives during the log/checkpoint section: deferred until both are written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume " + out in err
    run = read_run(out)
    assert run.status == "interrupted" and run.num_epochs == 1 and sig.name in run.attrs["message"]
    assert load_checkpoint(checkpoint_path(out))[1]["epoch"] == 1
    done = resume(out)
    assert done.returncode == 0, done.stderr
    assert read_run(out).status == "completed"
    assert_same_run(reference, out)


def test_a_log_being_written_cannot_be_resumed_or_overwritten(tmp_path):
    """A second process is refused (exit 2, one sentence, the log untouched) while the first runs;
    once the first is killed, its lock dies with it and --resume works."""
    out = str(tmp_path / "run.h5")
    proc = start(out, pause="60@1")
    try:
        wait_for(proc, "logged epoch 1")
        before = Path(out).read_bytes()
        for argv in (["--resume", out, "--no-progress"], [*TINY, "--out", out, "--overwrite"]):
            second = subprocess.run([sys.executable, RUN, *argv], capture_output=True, text=True, cwd=ROOT,
                                    timeout=300, check=False)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and "being written by another running process" in lines[0], second.stderr
            assert Path(out).read_bytes() == before
    finally:
        proc.kill()
        proc.wait(timeout=30)
    done = resume(out)
    assert done.returncode == 0, done.stderr
    assert read_run(out).status == "completed"
    # the lock file stays (never unlinked: two writers would otherwise be possible), holding our mark only
    assert Path(out + ".lock").read_bytes() == b"bioplaus run lock\n"
