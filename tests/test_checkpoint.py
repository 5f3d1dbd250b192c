"""Checkpoints: format 2 keys arrays by block name; a checkpoint of format 1 (written by bioplaus
247cccd, before stages, with the pinned arithmetic of ``helpers.PINNED_ENV``; kept in
``golden/v1-run.h5*``) still resumes, to the numbers of an uninterrupted run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import pinned_env, pinned_unavailable
from test_resume import assert_same_run

from bioplaus.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, upgrade
from bioplaus.log import read_run

RUN = Path(__file__).resolve().parents[1] / "sims" / "run.py"

GOLDEN = Path(__file__).resolve().parent / "golden"
FLAGS = ["--variant", "predsim-bpf", "--num-layers", "2", "--num-hidden", "8", "--dropout", "0.1", "--seed", "4",
         "--device", "cpu", "--no-progress"]  # the configuration of golden/v1-run.h5 (1 epoch, format 1)


def test_format_1_keys_are_renamed_by_block():
    state, meta = load_checkpoint(str(GOLDEN / "v1-run.h5.ckpt.npz"))
    assert meta["checkpoint_format"] == 1 and "params/0/W" in state and "opt/out/W/m" in state
    new = upgrade(state, 1, ["fc1", "fc2"])
    assert "blocks/fc1/params/W" in new and "blocks/fc2/fixed/B" in new and "blocks/fc1/opt/W/v" in new
    assert "out/params/W" in new and "out/opt/b/step" in new and "epoch" in new
    assert len(new) == len(state)
    for old_key, new_key in (("params/0/W", "blocks/fc1/params/W"), ("opt/1/dec_W/m", "blocks/fc2/opt/dec_W/m"),
                             ("out/b", "out/params/b"), ("running/1/var", "blocks/fc2/running/var")):
        np.testing.assert_array_equal(state[old_key], new[new_key])
    assert CHECKPOINT_FORMAT == 2


def _run(*argv):
    proc = subprocess.run([sys.executable, str(RUN), *argv], capture_output=True, text=True, env=pinned_env(),
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def golden_copy(name: str, tmp_path) -> Path:
    """``tmp_path/old.h5``: a copy of the stored run ``golden/<name>`` and its checkpoint, to resume with the
    pinned arithmetic (the test is skipped where it cannot be pinned)."""
    reason = pinned_unavailable()
    if reason:
        pytest.skip(reason)
    old = tmp_path / "old.h5"
    shutil.copy(GOLDEN / name, old)
    shutil.copy(GOLDEN / f"{name}.ckpt.npz", str(old) + ".ckpt.npz")
    return old


def test_a_format_1_checkpoint_resumes_bit_identically(tmp_path):
    old = golden_copy("v1-run.h5", tmp_path)
    _run("--resume", str(old), "--epochs", "2", "--no-progress")
    assert load_checkpoint(str(old) + ".ckpt.npz")[1]["checkpoint_format"] == CHECKPOINT_FORMAT
    straight = tmp_path / "straight.h5"
    # The old log keeps its schedule, (5, 8): no decay within 2 epochs. A new run cannot be given milestones
    # beyond its epochs, so it runs at a constant rate; the logged lr series are compared all the same. It
    # records no --conv-algorithm: im2col, as every run then computed (an mlp has no convolution).
    _run(*FLAGS, "--epochs", "2", "--lr-decay-milestones", "--conv-algorithm", "im2col", "--out", str(straight))
    assert read_run(str(old)).config.lr_decay_milestones == (5, 8)
    assert_same_run(str(straight), str(old), ignore=("lr_decay_milestones",))
