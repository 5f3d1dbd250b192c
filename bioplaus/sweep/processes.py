"""How a sweep starts and stops its runs: each an ordinary ``sims/run.py`` in a process group of its own,
run here (LocalPool) or on an MPI worker (MPIPool, ``run_task``)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import functools
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any

from bioplaus.files import PathError, append_regular, read_regular
from bioplaus.startup import hold_signals

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
POLL_S = 0.2


# ---------------------------------------------------------------------- running one run (local or on a worker)
_PR_SET_PDEATHSIG = 1
_prctl = None  # libc's prctl, looked up in the parent: the child between fork and exec only calls it


def _load_prctl():
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False
    return _prctl or None


def _child_setup(parent: int, hold: bool) -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGINT when its parent dies: a killed sweep leaves interrupted logs, not orphan runs.
    With ``hold``, SIGINT and SIGTERM are held over the exec until the child's own handlers are in place
    (:mod:`bioplaus.startup` releases them), so a run stopped in its first instant ends cleanly too."""
    if hold:
        hold_signals()
    if _prctl:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect: stop at once
            os.kill(os.getpid(), signal.SIGINT)


def _spawn(task: dict[str, Any]) -> subprocess.Popen:
    _load_prctl()
    env = dict(os.environ)
    env.update(task["env"])
    with append_regular(task["console"], "a run's console output") as fh:
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        fh.write(f"\n=== {stamp} {platform.node()}: {' '.join(task['argv'])}\n".encode())
        fh.flush()
        # start_new_session: a process group of its own, so a terminal's Ctrl-C reaches only the sweep,
        # which then stops each run once, with SIGINT. preexec_fn is safe here: the sweep starts runs from
        # one thread (LocalPool polls; an MPI worker runs its task on its main thread).
        return subprocess.Popen(task["argv"], stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                env=env, cwd=task["cwd"], start_new_session=True,
                                preexec_fn=functools.partial(_child_setup, os.getpid(),  # noqa: PLW1509
                                                             task.get("hold_signals", False)))


def _interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _tail(path: str) -> str:
    """Why a run stopped, from the end of its console output: its last ``error:`` or ``diverged:`` line of
    the latest attempt, else that attempt's last line."""
    try:
        text = read_regular(path, "a run's console output", 8192, tail=True).decode(errors="replace")
    except (OSError, PathError):
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("=== ")]
    lines = lines[starts[-1] + 1:] if starts else lines
    for ln in reversed(lines):
        if ln.startswith(("error:", "diverged:")):
            return ln
    return lines[-1] if lines else ""


def _result(task: dict[str, Any], rc: int, t0: float) -> dict[str, Any]:
    return {"name": task["name"], "rc": rc, "seconds": time.monotonic() - t0, "host": platform.node(),
            "tail": _tail(task["console"]) if rc != 0 else ""}


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run one sims/run.py to its end (an MPI worker's job): start it, forward SIGINT/SIGTERM, watch the stop
    file, return ``{name, rc, seconds, host, tail}``."""
    t0 = time.monotonic()
    proc = _spawn(task)
    saved = {}

    def forward(signum, frame):
        _interrupt(proc, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    with contextlib.suppress(ValueError):  # only the main thread may install handlers
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, forward)
    try:
        told = False
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if not told and task.get("stop_file") and os.path.exists(task["stop_file"]):
                    _interrupt(proc)
                    told = True
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
    return _result(task, rc, t0)


# ---------------------------------------------------------------------- pools: local processes or MPI workers
class LocalPool:
    """``jobs`` children of this process at a time; polled, no threads (so ``preexec_fn`` is safe)."""

    mpi = False

    def __init__(self, jobs: int) -> None:
        self.slots = jobs
        self.procs: dict[str, tuple[subprocess.Popen, dict, float]] = {}

    def start(self, task: dict[str, Any]) -> None:
        self.procs[task["name"]] = (_spawn(task), task, time.monotonic())

    def finished(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            out = []
            for name, (proc, task, t0) in list(self.procs.items()):
                rc = proc.poll()
                if rc is not None:
                    del self.procs[name]
                    out.append(_result(task, rc, t0))
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    def interrupt(self, sig: int) -> None:
        for proc, _, _ in self.procs.values():
            _interrupt(proc, sig)

    def __len__(self) -> int:
        return len(self.procs)

    def close(self) -> None:
        pass


class MPIPool:
    """The MPI world's other ranks, one run each at a time (``mpi4py.futures.MPIPoolExecutor``)."""

    mpi = True

    def __init__(self, executor) -> None:
        self.executor = executor
        self.slots = max(1, int(executor.num_workers))
        self.futures: dict[Any, dict] = {}

    def start(self, task: dict[str, Any]) -> None:
        self.futures[self.executor.submit(run_task, task)] = task

    def finished(self, timeout: float) -> list[dict[str, Any]]:
        from concurrent.futures import FIRST_COMPLETED, wait

        if not self.futures:
            time.sleep(timeout)
            return []
        done, _ = wait(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        for fut in done:
            task = self.futures.pop(fut)
            try:
                out.append(fut.result())
            except Exception as exc:  # noqa: BLE001 -- a worker that died: that run failed, the others go on
                out.append({"name": task["name"], "rc": -1, "seconds": 0.0, "host": "?",
                            "tail": f"the MPI worker failed: {exc.__class__.__name__}: {exc}"})
        return out

    def interrupt(self, sig: int) -> None:
        pass  # the workers watch the stop file (see Sweep.stop)

    def __len__(self) -> int:
        return len(self.futures)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def mpi_executor():
    """An MPIPoolExecutor when launched as ``mpiexec -n K python -m mpi4py.futures sims/sweep.py`` (K > 1),
    else None."""
    if "mpi4py.futures" not in sys.modules:
        return None
    try:
        from mpi4py import MPI
        from mpi4py.futures import MPIPoolExecutor
    except ImportError:
        return None
    if MPI.COMM_WORLD.Get_size() < 2:
        return None
    return MPIPoolExecutor()
