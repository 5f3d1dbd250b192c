"""Exit statuses and messages (issue 24, class 5): two identical sweeps started together (the second waits
for the first, as the README says, and both end 0), a cache that fills during a download (74, a full
disk, not 2), a bad ``--stages`` under mpiexec (said once, by rank 0), ``--no-progress`` (no download bar
either), and a run that meets a full disk with no room left to rewrite its log (its status still becomes
``interrupted``: the status is a fixed-size field, rewritten in place).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from test_analysis import make_log
from test_bounded_data import rich_server  # noqa: F401 -- a fixture
from test_cli import listing
from test_data_download import cache, tiny_idx_dataset  # noqa: F401 -- cache: a fixture
from test_log import series_of
from test_parallel import HAVE_MPI, MPIEXEC
from test_storage import _mount_tmpfs
from test_unsafe_files import assert_one_error

from bioplaus import files, runner
from bioplaus.cli import main
from bioplaus.data import DATASETS
from bioplaus.log import STATUS_BYTES, RunLog, read_run

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(ROOT / "sims" / "sweep.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")


# ---------------------------------------------------------------------- two sweeps at once
@pytest.mark.slow
def test_two_identical_sweeps_started_together_both_end_well(tmp_path):
    """Before: both exited 1 with a spurious 'failed with status 2' (each refused by the other's runs)."""
    argv = [sys.executable, SWEEP, "--recipes", "fashion-mnist-mlp-pred", "fashion-mnist-mlp-sim", "--seeds", "1",
            "2", "--epochs", "2", "--set", "num_layers=1", "--set", "num_hidden=16", "--set",
            "dataset=fashion-mnist-mini", "--set", "device=cpu", "--threads-per-job", "1", "--jobs", "2",
            "--out-dir", str(tmp_path / "out")]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                              env=ENV, start_new_session=True) for _ in range(2)]
    outs = []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, 9)
            raise
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("failed" in out for out in outs), outs
    waited = [out for out in outs if "another sweep is writing into" in out]
    assert len(waited) == 1 and "0 completed now, 4 already complete" in waited[0], outs
    logs = sorted((tmp_path / "out").glob("*.h5"))
    assert len(logs) == 4 and all(read_run(str(p)).status == "completed" for p in logs)


def test_a_sweep_waits_for_the_one_writing_into_its_folder(tmp_path, capsys):
    """In one process: the folder's sweep lock is held (as by another sweep); the sweep says so and waits."""
    import threading

    from test_unsafe_files import RUN, sweep_argv

    from bioplaus import sweep as sweep_mod
    from bioplaus.sweep.cli import SWEEP_LOCK

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    other = files.FileLock(str(out_dir / SWEEP_LOCK))
    assert other.take()
    threading.Timer(2.0, other.release).start()  # the other sweep ends in 2 s
    t0 = time.monotonic()
    assert sweep_mod.main(sweep_argv(out_dir), run_script=RUN) == 0
    assert time.monotonic() - t0 >= 2.0
    assert "another sweep is writing into" in capsys.readouterr().out


# ---------------------------------------------------------------------- a download: a full cache, --no-progress
@pytest.fixture
def tiny_dataset(rich_server, cache, monkeypatch, tmp_path):  # noqa: F811 -- rich_server, cache: the fixtures
    """A registered dataset of a few images, served on 127.0.0.1: a run must download it."""
    base_url, served = rich_server
    spec, _ = tiny_idx_dataset(served, base_url)
    spec = dataclasses.replace(spec, num_classes=10, class_names=tuple("0123456789"))
    monkeypatch.setitem(DATASETS, spec.name, spec)
    monkeypatch.chdir(tmp_path)
    return spec


RUN_TINY = ["--variant", "pred", "--num-layers", "1", "--num-hidden", "8", "--epochs", "1", "--batch-size", "4",
            "--device", "cpu"]


def test_a_full_cache_during_a_download_is_a_full_disk(tiny_dataset, cache, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Before: exit 2 (bad input). Now 74, as for any full disk, with nothing cached and nothing written."""
    monkeypatch.setattr(files, "free_bytes", lambda folder: 1000)
    before = listing(tmp_path / "served")
    rc = main([*RUN_TINY, "--dataset", tiny_dataset.name, "--out", str(tmp_path / "run.h5")])
    assert rc == runner.EXIT_STORAGE
    line = assert_one_error(capsys.readouterr().err, "no room to download")
    assert "free space" in line
    assert not (tmp_path / "run.h5").exists() and not cache.exists()
    assert listing(tmp_path / "served") == before


def test_a_cache_on_a_disk_that_fills_is_a_full_disk_too(tiny_dataset, tmp_path, capsys, monkeypatch):
    """The same with a real full disk: the cache on a 1 MiB tmpfs, a file of 3 MiB sent without its length
    (so no free-space check can see it coming)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(str(disk), "1m"):
        pytest.skip("no tmpfs can be mounted here")
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(disk))
        first = tiny_dataset.files[0]
        (tmp_path / "served" / "big.gz").write_bytes(os.urandom(3 << 20))
        base = first.url.rsplit("/", 1)[0]
        big = dataclasses.replace(first, url=f"{base}/nolength/big.gz")
        monkeypatch.setitem(DATASETS, tiny_dataset.name,
                            dataclasses.replace(tiny_dataset, files=(big, *tiny_dataset.files[1:])))
        rc = main([*RUN_TINY, "--dataset", tiny_dataset.name, "--no-progress", "--out", str(tmp_path / "run.h5")])
        err = capsys.readouterr().err
        assert rc == runner.EXIT_STORAGE, err
        assert_one_error(err, "no room to download")
        assert [p for p in disk.rglob("*") if p.is_file()] == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("no_progress", [True, False])
def test_no_progress_hides_the_download_bar(tiny_dataset, tmp_path, capsys, no_progress):
    argv = [*RUN_TINY, "--dataset", tiny_dataset.name, "--out", str(tmp_path / "run.h5")]
    assert main(argv + (["--no-progress"] if no_progress else [])) == 0
    err = capsys.readouterr().err
    bar = tiny_dataset.files[0].filename + ":"  # tqdm's description of the download's bar
    assert (bar in err) is not no_progress, err


# ---------------------------------------------------------------------- --stages under mpiexec
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpiexec (pip install '.[mpi]')")
@pytest.mark.parametrize("stages", ["x", "0,1", "1,,2"])
def test_a_bad_stages_under_mpiexec_is_said_once(tmp_path, stages):
    """Before: one error line per rank (every rank parses the flags; now only rank 0 speaks)."""
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(ROOT / "sims" / "run.py"), "--variant", "predsim",
                           "--parallel", "layers", "--stages", stages, "--out", str(tmp_path / "x.h5")],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 2
    assert "--stages" in assert_one_error(proc.stderr)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- a full disk: the status in place
def test_the_status_is_rewritten_in_place_when_there_is_no_room(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    make_log(path, "pred", status="running")
    size = path.stat().st_size
    with h5py.File(path, "r") as f:
        assert f.attrs.get_id("status").get_type().get_size() == STATUS_BYTES  # fixed-length, from the creation on

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("bioplaus.log.atomic_write", no_room)  # no new copy of the log can be written
    log = RunLog(str(path))
    with pytest.raises(OSError):
        log.set_status("interrupted", "full")
    assert runner._mark(log, "interrupted", "full") is True
    run = read_run(str(path))
    assert run.status == "interrupted" and path.stat().st_size == size
    assert run.num_epochs == 4  # every completed epoch still there


def test_a_log_without_a_fixed_status_is_left_as_it_is(tmp_path):
    """A log of an older bioplaus (its status a variable-length string): no place to rewrite, no change."""
    path = tmp_path / "old.h5"
    make_log(path, "pred", status="running")
    with h5py.File(path, "r+") as f:
        f.attrs["status"] = "running"  # h5py's variable-length string, as bioplaus wrote it before
    data = path.read_bytes()
    assert RunLog(str(path)).set_status_in_place("interrupted") is False
    assert path.read_bytes() == data


def test_a_format_1_log_converted_on_resume_gets_a_fixed_status(tmp_path):
    """golden/v1-run.h5 (format 1, a variable-length status): converted for a resume, its status takes the
    fixed length, so that a full disk later in the resumed run can still mark it in place."""
    old = tmp_path / "old.h5"
    old.write_bytes((ROOT / "tests" / "golden" / "v1-run.h5").read_bytes())
    status = read_run(str(old)).status
    assert RunLog(str(old)).set_status_in_place("interrupted") is False
    RunLog.open_for_resume(str(old), series=series_of(read_run(str(old)).config))
    with h5py.File(old, "r") as f:
        assert f.attrs.get_id("status").get_type().get_size() == STATUS_BYTES and f.attrs["status"].decode() == status
    assert RunLog(str(old)).set_status_in_place("interrupted") is True
    assert read_run(str(old)).status == "interrupted"


# ---------------------------------------------------------------------- a signal inside code that catches errors
@pytest.mark.parametrize("caught", [Exception, BaseException], ids=["except-Exception", "except-BaseException"])
def test_a_signal_caught_by_code_inside_an_epoch_still_stops_the_run(tmp_path, monkeypatch, caught):
    """A signal lands anywhere in an epoch, also inside code that catches errors and goes on (library code
    tries a fallback with ``except Exception``; a few catch everything). Before: the runner's interruption
    was an Exception, swallowed there, and the run trained to its end with status 0 (seen once in
    test_startup_signals, the figures command signalled in its first epochs). Now it is not an Exception,
    and a signal once received stops the run after that epoch even where something swallowed it."""
    import signal

    from bioplaus.train import Trainer

    train_epoch = Trainer.train_epoch

    def swallowing(self, *args, **kwargs):
        stats = train_epoch(self, *args, **kwargs)
        if stats["epoch"] == 2:
            try:
                signal.raise_signal(signal.SIGINT)
                sum(range(1000))  # the handler runs by here at the latest
            except caught:
                pass
        return stats

    monkeypatch.setattr(Trainer, "train_epoch", swallowing)
    out = tmp_path / "run.h5"
    result = runner.run({"variant": "predsim", "dataset": "fashion-mnist-mini", "num_layers": 1, "num_hidden": 16,
                         "epochs": 6, "device": "cpu"}, out=str(out))
    assert result.status == "interrupted" and result.exit_code == 130
    run = read_run(str(out))
    # through an ``except Exception``, epoch 2 never ends; swallowed whole, it ends and the run stops after it
    assert run.status == "interrupted" and run.num_epochs == (1 if caught is Exception else 2)


def test_a_command_signalled_before_its_run_does_not_start_it(tmp_path, monkeypatch):
    """The command's start-up handler raised its Stop and something swallowed it (a library's bare
    ``except:``): the run that follows does not begin (no log) and says it was interrupted."""
    import signal

    from bioplaus import startup

    monkeypatch.setattr(startup, "_pending", [signal.SIGTERM])
    out = tmp_path / "run.h5"
    result = runner.run({"variant": "predsim", "dataset": "fashion-mnist-mini", "num_layers": 1, "num_hidden": 16,
                         "epochs": 2, "device": "cpu"}, out=str(out))
    assert result.status == "interrupted" and result.exit_code == 130 and result.epochs == 0
    assert list(tmp_path.iterdir()) == []
