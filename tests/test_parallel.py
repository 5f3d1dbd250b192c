"""Layer-parallel training over MPI: the proof that nothing about the learning changes.

On the CPU with one BLAS thread per process, ``mpiexec -n 2`` and ``-n 3`` runs of local rules log
every number, and keep every checkpoint array, bit-identical to the sequential run (mlp and a small
conv net, predsim and predsim-bpf, with dropout and the probe, 2 epochs). A pipelined run interrupted
after epoch 1 resumes sequentially, and a sequential one resumes pipelined, to the same numbers.
SIGINT to mpiexec stops every rank and marks the log; a rank killed with SIGKILL ends the others, and
the run resumes. Bad uses are refused with one sentence.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resume import assert_same_run

from bioplaus.log import read_run

pytestmark = pytest.mark.slow  # end-to-end: processes, whole runs (see tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "sims", "run.py")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
try:
    import mpi4py  # noqa: F401

    HAVE_MPI = MPIEXEC is not None
except ImportError:
    HAVE_MPI = False
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpiexec (pip install '.[mpi]')")

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
# a constant rate: a run of 1 epoch extended to 2 keeps its schedule, and must match a straight run of 2
COMMON = ["--device", "cpu", "--no-progress", "--dropout", "0.1", "--probe-every", "1", "--seed", "3",
          "--lr-decay-milestones"]
NETS = {
    "mlp": ["--model", "mlp", "--num-layers", "3", "--num-hidden", "32"],
    "conv": ["--model", "vgg6b", "--feat-mult", "0.0625", "--num-hidden", "32", "--nonlin", "leakyrelu",
             "--dim-in-decoder", "256"],
}


def run(args, ranks: int | None = None, timeout: float = 600, check: bool = True, **kwargs):
    cmd = [sys.executable, RUN, *args]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd, "--parallel", "layers"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout, check=False,
                          **kwargs)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The sequential reference run of each (net, variant), 2 epochs."""
    folder = tmp_path_factory.mktemp("seq")
    logs = {}
    for net, flags in NETS.items():
        for variant in ("predsim", "predsim-bpf"):
            out = str(folder / f"{net}-{variant}.h5")
            run(["--variant", variant, *flags, *COMMON, "--epochs", "2", "--out", out])
            logs[net, variant] = out
    return logs


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("variant", ["predsim", "predsim-bpf"])
@pytest.mark.parametrize("net", sorted(NETS))
def test_pipeline_is_bit_identical_to_the_sequential_run(net, variant, ranks, sequential, tmp_path):
    out = str(tmp_path / "pipe.h5")
    proc = run(["--variant", variant, *NETS[net], *COMMON, "--epochs", "2", "--out", out], ranks=ranks)
    assert f"{ranks} ranks (layer-parallel)" in proc.stdout and "stages: rank 0:" in proc.stdout
    assert read_run(out).attrs["device"].endswith(f"{ranks} ranks (layer-parallel)")
    assert_same_run(sequential[net, variant], out)


@needs_mpi
def test_drtp_pipelines_too(tmp_path):
    """drtp is local (the target, not an error from above, reaches each block): it pipelines, bit for bit."""
    args = ["--variant", "drtp", *NETS["conv"], *COMMON, "--epochs", "2"]
    seq, pipe = str(tmp_path / "seq.h5"), str(tmp_path / "pipe.h5")
    run([*args, "--out", seq])
    run([*args, "--out", pipe], ranks=3)
    assert_same_run(seq, pipe)


@needs_mpi
def test_interrupted_pipeline_resumes_sequentially_and_back(sequential, tmp_path):
    args = ["--variant", "predsim", *NETS["mlp"], *COMMON]
    a = str(tmp_path / "a.h5")
    run([*args, "--epochs", "1", "--out", a], ranks=2)  # pipelined epoch 1 ...
    run(["--resume", a, "--epochs", "2", "--no-progress"])  # ... sequential epoch 2
    assert_same_run(sequential["mlp", "predsim"], a)
    b = str(tmp_path / "b.h5")
    run([*args, "--epochs", "1", "--out", b])  # sequential epoch 1 ...
    run(["--resume", b, "--epochs", "2", "--no-progress"], ranks=3)  # ... pipelined over 3 ranks
    assert_same_run(sequential["mlp", "predsim"], b)


def _start(args, ranks, pause=""):
    env = dict(ENV, BIOPLAUS_TEST_PAUSE_AFTER_LOG=pause)
    return subprocess.Popen([MPIEXEC, "-n", str(ranks), sys.executable, RUN, *args, "--parallel", "layers"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)


def _wait_for(proc, marker, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"ended before {marker!r}: {proc.stderr.read()}")
        if line.startswith(marker):
            return
    raise AssertionError(f"no {marker!r} in {timeout}s")


def _ranks_of(out: str) -> dict[int, int]:
    """{MPI rank: pid} of the processes running sims/run.py for the log ``out`` (read from /proc)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if RUN.encode() in cmdline and out.encode() in cmdline and b"--parallel" in cmdline:
            names = (b"PMI_RANK=", b"OMPI_COMM_WORLD_RANK=")
            rank = next((int(e.split(b"=")[1]) for e in environ if e.startswith(names)), None)
            if rank is not None:
                found[rank] = int(pid)
    return found


@needs_mpi
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_mpiexec_stops_every_rank(sig, tmp_path):
    args = ["--variant", "predsim", *NETS["mlp"], *COMMON, "--epochs", "6"]
    reference = str(tmp_path / "ref.h5")
    run([*args, "--out", reference])
    out = str(tmp_path / "run.h5")
    proc = _start([*args, "--out", out], 3)
    try:
        _wait_for(proc, "epoch 1/6")  # epoch 1 is logged and checkpointed; epoch 2 is streaming
        os.kill(proc.pid, sig)
        t0 = time.monotonic()
        _out, err = proc.communicate(timeout=60)
        assert time.monotonic() - t0 < 30, "the ranks took too long to stop"
        assert proc.returncode == 130, err
        assert not _ranks_of(out)
    finally:
        _end_leftovers(proc, out)
    stopped = read_run(out)
    assert stopped.status == "interrupted" and 1 <= stopped.num_epochs < 6
    run(["--resume", out, "--no-progress"], ranks=2)
    assert_same_run(reference, out)


def _end_leftovers(proc, out: str) -> None:
    """After a failed assertion: no mpiexec and no rank outlives the test (hydra's proxy starts the ranks
    in a session of its own, so they are found by their log, not by process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    for pid in _ranks_of(out).values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@needs_mpi
@pytest.mark.parametrize("exchange", ["train@2", "eval@1", "values@1", "values@2", "arrays@1", "state@1"])
def test_an_interrupt_at_any_exchange_stops_every_rank(exchange, tmp_path):
    """SIGTERM to rank 0 right after it has sent a command (the N-th of that kind), before the rest of the
    exchange: it is held until the exchange is whole, then every rank stops (no rank left waiting)."""
    out = str(tmp_path / "run.h5")
    args = ["--variant", "predsim", *NETS["mlp"], *COMMON, "--epochs", "3", "--out", out]
    proc = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, RUN, *args, "--parallel", "layers"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(ENV, BIOPLAUS_TEST_SIGTERM_AFTER=exchange), start_new_session=True)
    try:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "interrupted by SIGTERM" in err
        assert not _ranks_of(out)
        stopped = read_run(out)
        assert stopped.status == "interrupted"
        assert stopped.num_epochs == {"train@2": 1, "state@1": 1}.get(exchange, 0)  # the epochs completed before
    finally:
        _end_leftovers(proc, out)


@needs_mpi
def test_a_killed_rank_ends_the_others_and_the_run_resumes(sequential, tmp_path):
    out = str(tmp_path / "run.h5")
    args = ["--variant", "predsim", *NETS["mlp"], *COMMON, "--epochs", "2", "--out", out]
    proc = _start(args, 3, pause="30@1")
    _wait_for(proc, "logged epoch 1")  # rank 0 waits between the log and the checkpoint of epoch 1
    ranks = _ranks_of(out)
    assert sorted(ranks) == [0, 1, 2], ranks
    os.kill(ranks[2], signal.SIGKILL)
    proc.communicate(timeout=60)  # no hang: mpiexec ends the other ranks
    assert proc.returncode != 0
    assert not _ranks_of(out)
    assert read_run(out).num_epochs == 1  # every completed epoch is on disk
    run(["--resume", out, "--no-progress"])  # sequentially: epoch 1 is recomputed from the start
    assert_same_run(sequential["mlp", "predsim"], out)


@needs_mpi
@pytest.mark.parametrize("args,ranks,match", [
    (["--variant", "glob"], 2, "cannot train glob"),
    (["--variant", "glob+sim"], 2, "cannot train glob+sim"),
    (["--variant", "dfa"], 2, "cannot train dfa"),
    (["--variant", "fa"], 2, "cannot train fa"),
    (["--variant", "predsim", "--num-layers", "2"], 3, "more than the 2 blocks"),
    (["--variant", "predsim", "--num-layers", "3", "--stages", "1,1"], 3, "--stages gives 2 stages but there are 3"),
    (["--variant", "predsim", "--num-layers", "3", "--stages", "1,1"], 2, "does not split"),
    (["--variant", "predsim", "--lr", "nan"], 2, "finite"),
    (["--variant", "predsim", "--ranks", "3"], 2, "--ranks only goes with --describe"),  # mpiexec -n sets them
])
def test_bad_pipelines_are_refused(args, ranks, match, tmp_path):
    out = tmp_path / "x.h5"
    proc = run([*args, "--device", "cpu", "--no-progress", "--out", str(out)], ranks=ranks, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())


def test_one_process_or_no_mpi_says_how_to_launch(tmp_path):
    proc = run(["--variant", "predsim", "--parallel", "layers", "--out", str(tmp_path / "x.h5")], check=False,
               timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"mpiexec -n K python {RUN} --parallel layers" in lines[0], proc.stderr  # as typed
    assert not any(tmp_path.iterdir())


def test_describe_shows_the_split_without_mpi():
    proc = run(["--variant", "predsim-bpf", "--model", "vgg8b", "--describe", "--parallel", "layers", "--ranks", "4"])
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("  rank ") for line in lines) == 4
    assert any(line.startswith("ideal speedup over one process:") for line in lines)
    assert lines[-1].startswith("parameters: ")
    refused = run(["--variant", "glob", "--describe", "--parallel", "layers", "--ranks", "2"], check=False)
    assert refused.returncode == 2 and "cannot train glob" in refused.stderr


def test_balanced_split_minimises_the_largest_stage():
    from itertools import combinations

    from bioplaus.parallel import balanced_split

    costs = [5.0, 1.0, 1.0, 7.0, 2.0, 2.0, 3.0]
    for k in range(1, len(costs) + 1):
        sizes = balanced_split(costs, k)
        assert len(sizes) == k and sum(sizes) == len(costs) and min(sizes) >= 1
        best = min(max(sum(costs[a:b]) for a, b in zip((0, *cuts), (*cuts, len(costs))))
                   for cuts in combinations(range(1, len(costs)), k - 1))
        first, loads = 0, []
        for n in sizes:
            loads.append(sum(costs[first:first + n]))
            first += n
        assert max(loads) == best
