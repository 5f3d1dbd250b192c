"""Bad input is found before anything is written (issue 24, class 4): a sweep checks every run it plans
as the run itself would (the seed, every ``--set`` value, the device, the memory, the data, the names of
its files) before it makes its out-dir; the figures command checks every run it would train before it
makes a folder; a log whose recorded numbers were edited is refused on ``--resume``; and a refusal
touches nothing, not even a folder's modification time (``test_cli.listing`` holds them all), because
the one check that writes (the folder probe) comes last.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_cli import assert_refused, listing, work  # noqa: F401 -- `work` is a fixture
from test_unsafe_files import RUN, assert_one_error, sweep_argv

from bioplaus import sweep as sweep_mod
from bioplaus.backend import gpu_available
from bioplaus.cli import main
from bioplaus.config import INT_MAX, SEED_MAX
from bioplaus.figures import main as figures_main
from bioplaus.log import EPOCH_SERIES, FORMAT_VERSION

LONG = "0." + "0" * 247 + "1"  # a valid learning rate of 250 digits: its run's file name would be too long

# Each: what the sweep is given (replacing the recipe's --set of the same flag), and words of its refusal.
SWEEP_BAD = [
    (["--seeds", str(SEED_MAX + 1)], f"--seed must be between 0 and {SEED_MAX}"),
    (["--seeds", "1", str(2**64)], "--seed must be between"),
    (["--set", "data_dir=/nonexistent/bioplaus-data"], "does not exist"),
    (["--set", "num_hidden=3000000"], "memory"),
    (["--set", "num_hidden=" + "9" * 250], "too large"),
    (["--set", "lr=" + "9" * 400], "finite"),
    (["--set", f"lr_decay_milestones=3 {INT_MAX + 1}"], "too large"),
    (["--set", f"lr=1e-3,{LONG}"], "too long"),
    (["--set", "dataset=mnist", "--set", "data_dir=/dev/null"], "is a device, not a folder"),
    *([(["--set", "device=gpu"], "gpu")] if not gpu_available() else []),
]


def _argv(out_dir, extra: list[str]) -> list[str]:
    argv = sweep_argv(out_dir)
    if extra[0] == "--seeds":
        i = argv.index("--seeds")
        argv = argv[:i] + argv[i + 2:]
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag == "--set":  # replaces the TINY --set of that flag
            name = value.split("=")[0]
            argv = [a for i, a in enumerate(argv) if not (a.startswith(name + "=") or
                                                           (a == "--set" and argv[i + 1].startswith(name + "=")))]
    return argv + extra


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """An out-dir a sweep has written into (one completed run, its record, its lock)."""
    out_dir = tmp_path_factory.mktemp("swept") / "out"
    assert sweep_mod.main(sweep_argv(out_dir), run_script=RUN, out=io.StringIO()) == 0
    return out_dir


@pytest.mark.parametrize("existing", [False, True], ids=["new-out-dir", "out-dir-with-a-run"])
@pytest.mark.parametrize("extra,words", SWEEP_BAD, ids=[" ".join(e)[:60] for e, _ in SWEEP_BAD])
def test_a_sweep_checks_every_planned_run_before_it_writes(tmp_path, capsys, monkeypatch, swept, extra, words,
                                                           existing):
    """Before: exit 1 after the out-dir, sweeps.jsonl and <run>.out were made ("failed with status 2")."""
    monkeypatch.setenv("BIOPLAUS_DATA_MIRROR", "file:///nonexistent/mirror")  # a download would fail: offline
    out_dir = tmp_path / "out"
    if existing:  # a folder a sweep already wrote into keeps what it had, its modification time too
        shutil.copytree(swept, out_dir)
    before = listing(tmp_path)
    assert sweep_mod.main(_argv(out_dir, extra), run_script=RUN) == sweep_mod.EXIT_USAGE
    assert words in assert_one_error(capsys.readouterr().err)
    assert listing(tmp_path) == before


FIGURES_BAD = [
    (["--num-hidden", "3000000"], "memory"),
    (["--num-layers", "1", "--epochs", str(INT_MAX + 1)], "too large"),
    *([(["--device", "gpu"], "gpu")] if not gpu_available() else []),
]


@pytest.mark.parametrize("argv,words", FIGURES_BAD, ids=[" ".join(a) for a, _ in FIGURES_BAD])
def test_the_figures_check_every_run_before_they_make_a_folder(tmp_path, capsys, monkeypatch, argv, words):
    """Before: a refused configuration left runs/small-runs-* behind."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    before = listing(tmp_path)
    assert figures_main([*argv, "--variants", "pred"]) == 2
    assert words in assert_one_error(capsys.readouterr().err)
    assert listing(tmp_path) == before


# ---------------------------------------------------------------------- logs edited, refused on --resume
def _edits():
    """Every per-epoch series of the log (the code's own list) set to a value no run logs, and the format
    version set to values no bioplaus wrote."""
    out = {}
    for name, (units, _) in EPOCH_SERIES.items():
        if name == "epoch":
            continue
        out[f"{name} NaN"] = ("epochs", name, np.nan, f"its {name} of epoch 1 is nan")
        out[f"{name} inf"] = ("epochs", name, np.inf, f"its {name} of epoch 1 is inf")
        if units in ("%", "nats", "s") or name == "lr":
            out[f"{name} negative"] = ("epochs", name, -1.0, f"its {name} of epoch 1 is -1.0")
        if units == "%":
            out[f"{name} above 100"] = ("epochs", name, 101.0, f"its {name} of epoch 1 is 101.0")
    out["lr zero"] = ("epochs", "lr", 0.0, "its lr of epoch 1 is 0.0")
    for version in (-1, 0, FORMAT_VERSION + 1):
        out[f"format_version {version}"] = ("attrs", "format_version", version, "format")
    return out


EDITS = _edits()


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A real run of 1 epoch, marked as stopped with 2 planned (so it resumes), and its checkpoint."""
    out = tmp_path_factory.mktemp("stopped") / "run.h5"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--variant", "predsim", "--num-layers", "1", "--num-hidden", "32", "--device", "cpu",
                     "--no-progress", "--epochs", "1", "--out", str(out)]) == 0
    with h5py.File(out, "r+") as f:
        cfg = json.loads(f.attrs["config"])
        cfg["epochs"] = 2
        f.attrs["config"] = json.dumps(cfg)
        f.attrs["status"] = "interrupted"
    return out


@pytest.fixture
def resumable(work, stopped_run):  # noqa: F811
    out = work / "cwd" / "run.h5"
    for suffix in ("", ".ckpt.npz"):
        shutil.copyfile(str(stopped_run) + suffix, str(out) + suffix)
    return out


@pytest.mark.parametrize("case", sorted(EDITS))
def test_a_log_with_edited_numbers_is_not_resumed(resumable, work, capsys, case):  # noqa: F811
    """Before: a NaN in lr or a negative format_version was resumed and the run "completed" with it."""
    where, name, value, words = EDITS[case]
    with h5py.File(resumable, "r+") as f:
        if where == "attrs":
            f.attrs[name] = value
        else:
            f[where][name][0] = value
    assert_refused(["--resume", str(resumable), "--no-progress"], work, capsys, words)


def test_the_untouched_log_resumes(resumable, capsys):
    assert main(["--resume", str(resumable), "--no-progress"]) == 0


# ---------------------------------------------------------------------- nothing touched, the folder's time included
def test_a_refused_run_leaves_its_folders_time_as_it_was(work, capsys, monkeypatch):  # noqa: F811
    """Refusals met after the checks of the output path (the device, the memory, the data, the checkpoint):
    before, the folder probe had made and removed a file there first."""
    out = work / "cwd" / "runs" / "run.h5"
    out.parent.mkdir()
    cases = [
        (["--num-hidden", "3000000"], "memory"),
        (["--data-dir", str(work / "missing")], "does not exist"),
        *([(["--device", "gpu"], "gpu")] if not gpu_available() else []),
    ]
    for extra, words in cases:
        assert_refused(["--variant", "pred", "--num-layers", "1", "--no-progress", "--out", str(out), *extra], work,
                       capsys, words)
