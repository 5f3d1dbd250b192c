"""Bad input of every kind the command line accepts: exit 2, one line starting ``error:``, no traceback,
and no file created, changed or removed (the files a test sets up included, devices and FIFOs too).

The classes of input come from the code's own inputs: every numeric flag (non-finite, out of range,
too large), every choice flag, the output path (empty, no .h5, a folder, a device, a FIFO, a symbolic
link, a file that is not a run log, unwritable, too long, under a file, in /proc), the resume path
(missing, a folder, a device, not a log, truncated, altered, a log of another run, a checkpoint of
another run, damaged or altered checkpoints), combinations with the dataset (classes per batch),
memory (a model that cannot fit), and the environment.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_cli import assert_refused, listing, work  # noqa: F401 -- `work` is a fixture

from bioplaus.checkpoint import load_checkpoint, save_checkpoint
from bioplaus.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "sims", "run.py")
TINY = ["--variant", "predsim", "--num-layers", "1", "--num-hidden", "32", "--epochs", "2", "--device", "cpu",
        "--no-progress"]
VGG = ["--variant", "predsim", "--model", "vgg8b", "--device", "cpu", "--no-progress"]

NUMERIC = [
    (["--lr", "nan"], "finite"), (["--lr", "inf"], "finite"), (["--lr", "-1"], "positive"), (["--lr", "0"], "positive"),
    (["--lr-decay-fact", "nan"], "finite"), (["--lr-decay-fact", "0"], "(0, 1]"), (["--lr-decay-fact", "1.5"], "(0, 1]"),
    (["--momentum", "nan"], "finite"), (["--momentum", "1"], "[0, 1)"), (["--momentum", "-0.1"], "[0, 1)"),
    (["--weight-decay", "-1"], "negative"), (["--weight-decay", "inf"], "finite"),
    (["--dropout", "nan"], "finite"), (["--dropout", "1"], "[0, 1)"), (["--dropout", "-0.5"], "[0, 1)"),
    (["--beta", "nan"], "finite"), (["--beta", "1.5"], "[0, 1]"), (["--beta", "-0.1"], "[0, 1]"),
    (["--epochs", "0"], "at least 1"), (["--epochs", "-3"], "at least 1"), (["--epochs", str(2**40)], "too large"),
    (["--batch-size", "0"], "at least 1"), (["--batch-size", str(2**40)], "too large"),
    (["--num-layers", "0"], "at least 1"), (["--num-layers", "-1"], "at least 1"),
    (["--num-hidden", "0"], "at least 1"), (["--num-hidden", "3000000"], "memory"),
    (["--dim-in-decoder", "0"], "at least 1"), (["--target-proj-size", "0"], "at least 1"),
    (["--variant", "predsim-bpf", "--target-proj-size", "2000000000"], "memory"),
    (["--cutout", "--cutout-length", "0"], "at least 1"), (["--cutout-length", "-4"], "negative"),
    (["--classes-per-batch", "11"], "10 classes"), (["--classes-per-batch", "-1"], "negative"),
    (["--classes-per-batch", "1"], "one class"), (["--classes-per-batch-until-epoch", "-1"], "negative"),
    (["--classes-per-batch", "4", "--batch-size", "3"], "cannot hold"),
    (["--seed", "-1"], "--seed"), (["--seed", "1180591620717411303424"], "--seed"), (["--seed", str(2**32)], "--seed"),
    (["--probe-every", "-1"], "negative"),
    (["--lr-decay-milestones", "-5"], "at least 1"), (["--lr-decay-milestones", "0", "3"], "at least 1"),
    (["--lr-decay-milestones", "5", "3"], "increasing"),
    (["--lr-decay-milestones", "3", str(2**31)], "too large"), (["--lr-decay-milestones", str(2**63)], "too large"),
    (["--optim", "adagrad"], "unknown optimizer"), (["--nonlin", "tanh"], "unknown nonlinearity"),
    (["--device", "tpu"], "unknown device"), (["--variant", "backprop"], "unknown variant"),
    (["--conv-algorithm", "fft"], "unknown --conv-algorithm"),
    (["--model", "resnet"], "unknown model"), (["--dataset", "imagenet"], "imagenet"),
    (["--epochs", "2.5"], "invalid int"), (["--lr", "fast"], "invalid float"),
    (["--data-dir", ""], "--data-dir"),
]


@pytest.mark.parametrize("argv,match", NUMERIC, ids=[" ".join(a) for a, _ in NUMERIC])
def test_bad_numbers_and_choices(argv, match, work, capsys):  # noqa: F811
    assert_refused([*TINY, *argv], work, capsys, match)


@pytest.mark.parametrize("argv,match", [
    (["--feat-mult", "1000"], "memory"), (["--feat-mult", "nan"], "finite"), (["--feat-mult", "inf"], "finite"),
    (["--feat-mult", "0.001"], "no channels"), (["--feat-mult", "0"], "positive"), (["--feat-mult", "-1"], "positive"),
])
def test_bad_conv_sizes(argv, match, work, capsys):  # noqa: F811
    """No allocation is attempted: the memory is estimated from shapes first."""
    assert_refused([*VGG, *argv], work, capsys, match)


# ------------------------------------------------------------------------------ --out
def test_out_paths(work, capsys):  # noqa: F811
    cwd = work / "cwd"
    notes = cwd / "notes.h5"
    notes.write_text("my notes, not a run log")
    readme = cwd / "README.md"
    readme.write_text("readme")
    long_name = "x" * 300 + ".h5"
    cases = [
        (["--out", ""], "file name"), (["--out", "   "], "file name"), (["--out", "run.hdf5"], "must end in .h5"),
        (["--out", "run"], "must end in .h5"), (["--out", ".h5"], "no name"), (["--out", str(cwd)], "must end in .h5"),
        (["--out", str(cwd / "dir.h5")], "is a folder"),
        (["--out", str(notes)], "already exists"), (["--out", str(notes), "--overwrite"], "not a bioplaus run log"),
        (["--out", long_name], "too long"), (["--out", str(cwd / "README.md" / "run.h5")], "not a folder"),
        (["--out", "/proc/x.h5"], "/proc"), (["--out", "/proc/bioplaus-never/x.h5"], "/proc does not accept new folders"),
        (["--overwrite"], "--overwrite needs --out"),
    ]
    (cwd / "dir.h5").mkdir()
    for argv, match in cases:
        assert_refused([*TINY, *argv], work, capsys, match)


def test_overwrite_replaces_only_a_run_log(work, capsys, tmp_path):  # noqa: F811
    """A device, a FIFO, a symbolic link to a log, a foreign checkpoint or lock: refused, untouched."""
    cwd = work / "cwd"
    fifo = cwd / "pipe.h5"
    os.mkfifo(fifo)
    assert_refused([*TINY, "--out", str(fifo), "--overwrite"], work, capsys, "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # /dev/null: not under the listed tree, so check its kind before and after
    before = os.stat("/dev/null")
    assert_refused([*TINY, "--out", "/dev/null", "--overwrite"], work, capsys, "must end in .h5")
    null = cwd / "null.h5"
    os.symlink("/dev/null", null)
    assert_refused([*TINY, "--out", str(null), "--overwrite"], work, capsys, "symbolic link")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null").st_rdev == before.st_rdev
    device = cwd / "device.h5"
    try:  # a character device named like a log (root only)
        os.mknod(device, stat.S_IFCHR | 0o600, before.st_rdev)
    except (PermissionError, OSError):
        pass
    else:
        assert_refused([*TINY, "--out", str(device), "--overwrite"], work, capsys, "a device")
        assert stat.S_ISCHR(os.lstat(device).st_mode)
    # a real run log, then things beside it that are not ours
    log = cwd / "run.h5"
    assert main([*TINY, "--epochs", "1", "--out", str(log)]) == 0
    capsys.readouterr()
    link = cwd / "link.h5"
    os.symlink(log, link)
    assert_refused([*TINY, "--out", str(link), "--overwrite"], work, capsys, "symbolic link")
    ckpt = cwd / "run.h5.ckpt.npz"
    ckpt.rename(cwd / "saved.npz")
    ckpt.write_bytes(b"a file of mine")
    assert_refused([*TINY, "--out", str(log), "--overwrite"], work, capsys, "not a bioplaus checkpoint")
    ckpt.unlink()
    (cwd / "saved.npz").rename(ckpt)
    lock = cwd / "run.h5.lock"
    lock.write_bytes(b"someone else's file")
    assert_refused([*TINY, "--out", str(log), "--overwrite"], work, capsys, "not a bioplaus lock")
    lock.unlink()
    os.mkfifo(lock)
    assert_refused([*TINY, "--out", str(log), "--overwrite"], work, capsys, "FIFO")
    lock.unlink()
    # and the real log may be replaced
    assert main([*TINY, "--epochs", "1", "--out", str(log), "--overwrite", "--seed", "9"]) == 0


def test_no_temporary_file_is_ever_truncated(work, capsys):  # noqa: F811
    """A user's file that happens to be named like a temporary file (``run.h5.tmp``) survives a run."""
    cwd = work / "cwd"
    for name in ("run.h5.tmp", "run.h5.ckpt.npz.tmp", ".run.h5.tmp"):
        (cwd / name).write_text("keep me")
    assert main([*TINY, "--epochs", "1", "--out", str(cwd / "run.h5")]) == 0
    for name in ("run.h5.tmp", "run.h5.ckpt.npz.tmp", ".run.h5.tmp"):
        assert (cwd / name).read_text() == "keep me"
    assert sorted(os.listdir(cwd)) == sorted(["run.h5", "run.h5.ckpt.npz", "run.h5.lock", "run.h5.tmp",
                                              "run.h5.ckpt.npz.tmp", ".run.h5.tmp"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder(work, capsys):  # noqa: F811
    ro = work / "cwd" / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_refused([*TINY, "--out", str(ro / "run.h5")], work, capsys, "not writable")
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------------ --resume
@pytest.fixture
def two_runs(work, capsys):  # noqa: F811
    """A completed 1-epoch run of 32 units (planned 2, interrupted) and one of 64 units / another seed."""
    cwd = work / "cwd"
    paths = {}
    for name, extra in (("a", []), ("wide", ["--num-hidden", "64"]), ("seed", ["--seed", "7"])):
        out = cwd / f"{name}.h5"
        assert main([*TINY, *extra, "--epochs", "1", "--out", str(out)]) == 0
        paths[name] = out
    capsys.readouterr()
    return paths


def test_resume_paths(work, capsys, two_runs):  # noqa: F811
    cwd = work / "cwd"
    (cwd / "folder.h5").mkdir()
    (cwd / "text.h5").write_text("not hdf5")
    os.mkfifo(cwd / "fifo.h5")
    cases = [
        (["--resume", str(cwd / "missing.h5")], "no run log"), (["--resume", str(cwd / "folder.h5")], "folder"),
        (["--resume", str(cwd / "text.h5")], "cannot resume"), (["--resume", str(cwd / "fifo.h5")], "FIFO"),
        (["--resume", "/dev/null"], "device"), (["--resume", ""], "needs the path"),
        (["--resume", "x" * 300 + ".h5"], "too long"),
    ]
    for argv, match in cases:
        assert_refused(argv, work, capsys, match)


def _swap_checkpoint(src, dst):
    os.replace(f"{src}.ckpt.npz", f"{dst}.ckpt.npz")


def test_a_checkpoint_of_another_run_is_refused(work, capsys, two_runs):  # noqa: F811
    a = two_runs["a"]
    _swap_checkpoint(two_runs["wide"], a)  # a 64-unit checkpoint beside a 32-unit log
    assert_refused(["--resume", str(a), "--epochs", "2"], work, capsys, "belongs to another run (its num_hidden")
    _swap_checkpoint(two_runs["seed"], a)  # another seed
    assert_refused(["--resume", str(a), "--epochs", "2"], work, capsys, "belongs to another run (its seed")


def test_altered_checkpoints_are_refused(work, capsys, two_runs):  # noqa: F811
    a = str(two_runs["a"])
    ckpt = a + ".ckpt.npz"
    state, meta = load_checkpoint(ckpt)
    original = Path(ckpt).read_bytes()

    def rewrite(state, meta):
        os.unlink(ckpt)
        save_checkpoint(ckpt, state, {k: v for k, v in meta.items() if k != "checkpoint_format"})

    key = next(k for k in state if k.endswith("/params/W"))
    cases = [
        ({**state, key: state[key][:, :-1]}, meta, "has shape"),
        ({**state, key: state[key].astype(np.float64)}, meta, "float64"),
        ({k: v for k, v in state.items() if k != key}, meta, "has no"),
        ({**state, "blocks/fc9/params/W": state[key]}, meta, "fc9"),
        (state, {**meta, "epoch": 5}, "holds"),
        (state, {**meta, "epoch": -1}, "damaged"),
        (state, {**meta, "config": "{not json"}, "no readable configuration"),
    ]
    for new_state, new_meta, match in cases:
        rewrite(new_state, new_meta)
        assert_refused(["--resume", a, "--epochs", "2"], work, capsys, match)
    # metadata that is not JSON at all, and a truncated archive
    with zipfile.ZipFile(ckpt, "w") as z:
        for name, arr in state.items():
            with z.open(name + ".npy", "w") as fh:
                np.lib.format.write_array(fh, arr)
        with z.open("__bioplaus_meta__.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array("this is not json"))
    assert_refused(["--resume", a, "--epochs", "2"], work, capsys, "not JSON")
    with open(ckpt, "wb") as fh:
        fh.write(original[: len(original) // 2])
    assert_refused(["--resume", a, "--epochs", "2"], work, capsys, "damaged")
    with open(ckpt, "wb") as fh:
        fh.write(original)
    assert main(["--resume", a, "--epochs", "2", "--no-progress"]) == 0  # the intact pair resumes


def test_altered_logs_are_refused(work, capsys, two_runs):  # noqa: F811
    a = str(two_runs["a"])
    original = Path(a).read_bytes()

    def altered(edit):
        with open(a, "wb") as fh:
            fh.write(original)
        with h5py.File(a, "r+") as f:
            edit(f)

    cases = [
        (lambda f: f["epochs"]["test_error"].resize((3,)), "do not all hold"),
        (lambda f: f["epochs"]["epoch"].__setitem__(0, 4.0), "numbered"),
        (lambda f: f.attrs.__setitem__("status", "exploded"), "unknown status"),
        (lambda f: f.attrs.__setitem__("config", "{]"), "configuration"),
        (lambda f: f.attrs.__setitem__("config", json.dumps({"num_hidden": -4})), "configuration"),
        (lambda f: f.attrs.__setitem__("format_version", 99), "newer"),
        (lambda f: f.attrs.__setitem__("format_version", "one"), "damaged"),
        (lambda f: f.__delitem__("layers"), "not a bioplaus run log"),
        (lambda f: f["layers"].create_group("fc1/extra"), "should be a series"),
    ]
    for edit, match in cases:
        altered(edit)
        assert_refused(["--resume", a, "--epochs", "2"], work, capsys, match)
    with open(a, "wb") as fh:  # truncated
        fh.write(original[: len(original) // 3])
    assert_refused(["--resume", a, "--epochs", "2"], work, capsys, "cannot resume")


# ------------------------------------------------------------------------------ environment, no traceback
def test_bad_environment(work, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("BIOPLAUS_TEST_PAUSE_AFTER_LOG", "soon")
    assert_refused([*TINY], work, capsys, "BIOPLAUS_TEST_PAUSE_AFTER_LOG")


@pytest.mark.parametrize("argv", [
    [*TINY, "--seed", "-1"], [*VGG, "--feat-mult", "1000"], [*TINY, "--out", "/proc/x.h5"],
    ["--resume", "/dev/null"], [*TINY, "--lr", "inf"],
])
def test_no_traceback_in_a_real_process(argv, work):  # noqa: F811
    before = listing(work)
    proc = subprocess.run([sys.executable, RUN, *argv], capture_output=True, text=True, cwd=str(work / "cwd"),
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert listing(work) == before
