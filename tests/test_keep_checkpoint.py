"""--keep-checkpoint {all,last,none} (issue 25, point 6): last as before; none removes the checkpoint when the
run completes (an interrupted run keeps it, and its resume still removes it at the end); all keeps one per
epoch beside the latest. A kill never costs a completed epoch in any of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from bioplaus.checkpoint import checkpoint_path, load_checkpoint
from bioplaus.cli import main
from bioplaus.files import epoch_checkpoint_path, epoch_checkpoints
from bioplaus.log import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "sims", "run.py")
TINY = ["--variant", "predsim", "--num-layers", "1", "--num-hidden", "16", "--device", "cpu", "--no-progress",
        "--threads", "1"]


def test_last_is_the_default(tmp_path, capsys):
    out = str(tmp_path / "a.h5")
    assert main([*TINY, "--epochs", "1", "--out", out]) == 0
    assert os.path.isfile(checkpoint_path(out)) and not epoch_checkpoints(out)
    assert read_run(out).attrs["keep_checkpoint"] == "last"
    assert f"train on: python sims/run.py --resume {out} --epochs N" in capsys.readouterr().out


def test_none_removes_it_when_the_run_completes(tmp_path, capsys):
    out = str(tmp_path / "a.h5")
    assert main([*TINY, "--epochs", "2", "--keep-checkpoint", "none", "--out", out]) == 0
    assert "checkpoint: removed (--keep-checkpoint none)" in capsys.readouterr().out
    assert not os.path.exists(checkpoint_path(out)) and sorted(os.listdir(tmp_path)) == ["a.h5", "a.h5.lock"]
    run = read_run(out)
    assert run.status == "completed" and run.num_epochs == 2 and run.attrs["keep_checkpoint"] == "none"
    assert main(["--resume", out, "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume:") and "--keep-checkpoint none" in err and "--config-from" in err


@pytest.mark.slow
def test_none_keeps_it_for_an_interrupted_run(tmp_path):
    out = str(tmp_path / "a.h5")
    env = dict(os.environ, BIOPLAUS_TEST_PAUSE_AFTER_LOG="30@1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, RUN, *TINY, "--epochs", "2", "--keep-checkpoint", "none", "--out", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("logged epoch 1"):
            break
    proc.send_signal(signal.SIGINT)  # held until the checkpoint of epoch 1 is written
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert read_run(out).status == "interrupted" and load_checkpoint(checkpoint_path(out))[1]["epoch"] == 1
    done = subprocess.run([sys.executable, RUN, "--resume", out, "--no-progress"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert read_run(out).num_epochs == 2 and not os.path.exists(checkpoint_path(out))  # the log's setting held


def test_all_keeps_one_per_epoch(tmp_path, capsys):
    out = str(tmp_path / "a.h5")
    assert main([*TINY, "--epochs", "2", "--keep-checkpoint", "all", "--out", out]) == 0
    assert main(["--resume", out, "--epochs", "3", "--no-progress"]) == 0  # the log's setting holds on resume
    assert epoch_checkpoints(out) == [epoch_checkpoint_path(out, k) for k in (1, 2, 3)]
    latest, meta = load_checkpoint(checkpoint_path(out))
    states = []
    for k in (1, 2, 3):
        state, meta = load_checkpoint(epoch_checkpoint_path(out, k))
        assert meta["epoch"] == k and int(state["epoch"]) == k
        states.append(state)
    for key in latest:
        np.testing.assert_array_equal(states[2][key], latest[key])
    assert not np.array_equal(states[0]["blocks/fc1/params/W"], states[2]["blocks/fc1/params/W"])
    # another run at that path: refused without --overwrite; with it, the old epochs' checkpoints go too
    capsys.readouterr()
    os.unlink(out)
    os.unlink(checkpoint_path(out))
    assert main([*TINY, "--epochs", "1", "--out", out]) == 2
    assert "an epoch's checkpoint) already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*TINY, "--epochs", "1", "--out", out, "--overwrite"]) == 0
    assert not epoch_checkpoints(out) and read_run(out).num_epochs == 1


def test_a_bad_choice_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--keep-checkpoint", "some"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--keep-checkpoint" in err[0] and "invalid choice" in err[0]
    assert not list(tmp_path.iterdir())
