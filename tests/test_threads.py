"""Threads (issue 25, point 2): --threads N, a default of the usable cores over the processes of the run on
this host, the count in the header and the log, one warning line on a machine already busier than its
cores; a sweep passes --threads to each run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bioplaus import backend, threads
from bioplaus.cli import main
from bioplaus.log import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--variant", "predsim", "--num-layers", "1", "--num-hidden", "16", "--device", "cpu", "--no-progress",
        "--epochs", "1"]


@pytest.fixture
def no_env_threads(monkeypatch):
    for name in (*threads.ENV_LIMITS, *threads.LOCAL_SIZE_VARS):
        monkeypatch.delenv(name, raising=False)


def test_the_default_divides_the_usable_cores_by_the_processes(monkeypatch, no_env_threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert threads.usable_cores() == 6
    assert threads.choose().count == 6
    assert threads.choose(processes=2).count == 3
    assert threads.choose(processes=4).count == 1 and threads.choose(processes=12).count == 1
    assert threads.choose(5).count == 5 and threads.choose(5).source == "--threads"
    monkeypatch.setenv("MPI_LOCALNRANKS", "3")  # MPICH's launcher: 3 ranks of this run on this node
    assert threads.local_processes() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # a job script's (or a test's) choice is kept
    kept = threads.choose()
    assert (kept.count, kept.set_pools) == (1, False) and "OPENBLAS_NUM_THREADS" in kept.source
    with pytest.raises(ValueError, match="--threads takes"):
        threads.choose(0)


def test_limit_sets_both_pools_and_restores_them():
    pytest.importorskip("threadpoolctl")
    from threadpoolctl import threadpool_info

    def blas():
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    before, before_cpu = blas(), backend.cpu_threads()
    with threads.limit(threads.Threads(1, "--threads")):
        assert blas() <= {1} and backend.cpu_threads() == 1
    assert blas() == before and backend.cpu_threads() == before_cpu
    with threads.limit(threads.Threads(3, "env", set_pools=False)):  # the environment's count: nothing changes
        assert blas() == before


def test_the_count_is_in_the_header_and_the_log(tmp_path, capsys, no_env_threads, monkeypatch):
    out = str(tmp_path / "a.h5")
    assert main([*TINY, "--threads", "1", "--out", out]) == 0
    assert "threads: 1 (--threads)" in capsys.readouterr().out.splitlines()
    assert read_run(out).attrs["threads"] == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    out2 = str(tmp_path / "b.h5")
    assert main([*TINY, "--out", out2]) == 0
    assert "threads: 3 (3 usable cores / 1 process)" in capsys.readouterr().out.splitlines()
    assert read_run(out2).attrs["threads"] == 3


def test_one_warning_line_when_the_load_exceeds_the_cores(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (9.5, 9.0, 8.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    line = threads.load_warning(threads.Threads(2, "x"))
    assert line.startswith("warning: this machine's load (9.5 over the last minute) already exceeds its 2 cores")
    assert main([*TINY, "--threads", "2", "--out", str(tmp_path / "a.h5")]) == 0
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and line in out.splitlines()
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert threads.load_warning(threads.Threads(2, "x")) is None


def test_a_bad_thread_count_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in ("0", "-2", "5000"):
        assert main([*TINY, "--threads", value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --threads takes a number of threads"), err
    assert not list(tmp_path.iterdir())


def test_a_sweep_passes_threads_to_each_run(tmp_path):
    from bioplaus.sweep import Plan, Sweep, build_runs

    spec = build_runs(["fashion-mnist-mlp-pred"], [1], 1, [], str(tmp_path))[0]
    sweep = Sweep([Plan(spec, "new")], pool=None, run_command=[sys.executable, "-m", "bioplaus", "run"],
                  out_dir=str(tmp_path), threads=3)
    task = sweep.task(Plan(spec, "new"))
    assert task["argv"][:4] == [sys.executable, "-m", "bioplaus", "run"]
    i = task["argv"].index("--threads")
    assert task["argv"][i + 1] == "3" and task["env"] == {}  # no OMP_/OPENBLAS_ variables: the run sets its pools


@pytest.mark.slow
def test_ranks_on_one_node_share_its_cores(tmp_path):
    """Under mpiexec -n 2 (--parallel layers), each rank takes the usable cores / 2 (no variable set)."""
    import shutil

    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    pytest.importorskip("mpi4py")
    if mpiexec is None:
        pytest.skip("needs mpiexec")
    env = {k: v for k, v in os.environ.items() if k not in threads.ENV_LIMITS}
    out = str(tmp_path / "p.h5")
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, os.path.join(ROOT, "sims", "run.py"), *TINY,
                           "--out", out, "--parallel", "layers", "--num-layers", "2"], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = max(1, threads.usable_cores() // 2)
    assert f"threads: {expected} (" in proc.stdout and "2 processes of this run on this host" in proc.stdout
    assert read_run(out).attrs["threads"] == expected
