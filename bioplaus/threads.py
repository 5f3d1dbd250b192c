"""How many threads a run computes with: one BLAS (and OpenMP) pool per process, sized to the cores
this process may use divided by the processes of this run on this host.

NumPy's OpenBLAS starts a thread per core, and bioplaus's element-wise passes share their blocks
among as many. Two processes of one run (the ranks of ``--parallel layers`` on one node), or the jobs
of a sweep, each doing so oversubscribe the cores; so does any run on a machine whose cores are
already busy, where threads that wait on each other can make a step several times slower. Hence:

- ``--threads N`` sets both pools to N (threadpoolctl, for the run's lifetime);
- without it, ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` or ``MKL_NUM_THREADS`` set in the
  environment is kept (a job script's choice, and how the tests pin one thread per process);
- otherwise N = the cores this process may run on (``os.sched_getaffinity``: a cgroup or ``taskset``
  may give it fewer than the machine has) // the processes of this run on this host: the MPI ranks on
  the node (MPI's shared-memory split, or the launcher's local-size variable); a sweep passes
  ``--threads`` to each of its runs.

The count is printed in the run's header and recorded in the log (attribute ``threads``). Numbers are
bit-identical only between runs with the same thread count per process (a BLAS sums in another
order with another number of threads); the tests that compare runs pin one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

ENV_LIMITS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Launchers' count of the ranks on this node: Open MPI, MPICH's Hydra, MVAPICH, PMIx.
LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE", "PMIX_LOCAL_SIZE")
MAX_THREADS = 4096


@dataclass(frozen=True)
class Threads:
    """A run's thread count, why, and whether the run sets it (False: the environment's is kept)."""

    count: int
    source: str
    set_pools: bool = True

    def describe(self) -> str:
        return f"{self.count} ({self.source})"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), else the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def local_processes(comm=None) -> int:
    """The processes of this run on this host: the ranks of ``comm`` that share this node's memory, else
    the launcher's local-size variable, else 1."""
    shared = _shared_memory_size(comm) if comm is not None else 0
    if shared:
        return shared
    for name in LOCAL_SIZE_VARS:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _shared_memory_size(comm) -> int:
    """The ranks of ``comm`` on this node (MPI's shared-memory split), or 0 where MPI cannot say."""
    try:
        from mpi4py import MPI

        return max(1, comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size())
    except Exception:  # noqa: BLE001 -- an MPI without shared-memory splits: the launcher may say
        return 0


def env_limit() -> tuple[str, int] | None:
    """The first of OMP/OPENBLAS/MKL_NUM_THREADS set to a positive integer, as (name, value)."""
    for name in ENV_LIMITS:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return name, int(value)
    return None


def check_count(value: int, flag: str = "--threads") -> int:
    """``value`` if it is a usable thread count; ValueError with one sentence otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise ValueError(f"{flag} takes a number of threads from 1 to {MAX_THREADS}, not {value!r}")
    return value


def choose(flag: int | None = None, processes: int = 1) -> Threads:
    """The run's threads: ``--threads``, else the environment's, else the usable cores // ``processes``."""
    if flag is not None:
        return Threads(check_count(flag), "--threads")
    env = env_limit()
    if env is not None:
        return Threads(env[1], f"{env[0]}={env[1]} in the environment", set_pools=False)
    cores = usable_cores()
    count = max(1, cores // max(1, processes))
    who = f"{processes} processes of this run on this host" if processes > 1 else "1 process"
    return Threads(count, f"{cores} usable core{'s' if cores != 1 else ''} / {who}")


@contextlib.contextmanager
def limit(threads: Threads | None) -> Iterator[None]:
    """Within: the BLAS/OpenMP pools (threadpoolctl) and bioplaus's element-wise passes use
    ``threads.count`` threads (nothing changes when the environment's count is kept)."""
    if threads is None or not threads.set_pools:
        yield
        return
    from threadpoolctl import threadpool_limits

    from bioplaus import backend

    previous = backend.set_cpu_threads(threads.count)
    try:
        with threadpool_limits(limits=threads.count):
            yield
    finally:
        backend.set_cpu_threads(previous)


def load_warning(threads: Threads) -> str | None:
    """One line when the machine is already busier than its cores (1-minute load average), else None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = os.cpu_count() or 1
    if load <= cores:
        return None
    hint = "; --threads 1 may well be faster" if threads.count > 1 else ""
    return (f"warning: this machine's load ({load:.1f} over the last minute) already exceeds its {cores} "
            f"core{'s' if cores != 1 else ''}, so this run's {threads.count} thread{'s' if threads.count != 1 else ''} "
            f"will wait for other processes{hint}")
