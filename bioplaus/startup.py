"""The first lines of every bioplaus command: SIGINT and SIGTERM handled from the program's first line.

A command spends its first half second or more importing NumPy, h5py, matplotlib and the engine.
Python's defaults would meet a signal there with a traceback (SIGINT's KeyboardInterrupt in the
middle of an import) or a silent death with status 143 (SIGTERM). So each entry point (the
``bioplaus`` and ``bioplaus-run`` console scripts, ``python -m bioplaus``, ``sims/*.py``) starts its
command through :func:`command`, which installs the handlers before it imports anything heavy (this
module, ``bioplaus/__init__``, :mod:`bioplaus.command` and :mod:`bioplaus.program` use the standard
library only):

- while the command's modules import, a signal is only noted, and the command ends when they are
  done: one line, status 130, nothing written;
- then SIGINT and SIGTERM raise :class:`Stop` (a ``KeyboardInterrupt``, so every ``except
  KeyboardInterrupt`` of the commands handles both), once: a second signal while the first is being
  handled (a terminal's Ctrl-C reaches mpiexec and every rank) is dropped, so the clean-up it
  interrupts is never itself interrupted. The run loop and the sweep install their own handlers
  while they work, and give these back when they are done;
- a signal that escapes the command ends it with one line and status 130; one whose Stop was raised
  where Python cannot let an exception out (a weakref callback or ``__del__`` that the garbage
  collector runs, importlib's module-lock callbacks among them) is swallowed there without a word
  (:func:`_unraisable`) and still ends the command: the run loop and the commands ask
  :func:`stopped`;
- a parent may hold both signals over a child's start-up (a sweep does, :func:`hold_signals` between
  fork and exec): the mask is inherited, and :func:`guard` lets them through once its handlers are
  in place, so a child stopped in its first instant still ends cleanly;
- under ``mpiexec ... --parallel layers``, the ranks other than 0 (known from the launcher's
  environment, before MPI starts) ignore both signals from the first line: rank 0 decides, and tells
  them (:func:`release_mpi_ranks` when it stops before the pipeline has started). Rank 0 holds the
  signals from the end of its imports until MPI is up (:func:`bioplaus.parallel.main_parallel` lets
  them through and, if one came, tells the others to end): a rank that exits before MPI has started,
  or before it has said its first word, would leave the others waiting for ever.

The interpreter's own start-up, before the program's first line (about a tenth of a second), is out
of any program's reach: a signal there meets Python's defaults.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

EXIT_INTERRUPTED = 130
PARALLEL_FLAG = "--parallel"
# Where MPI launchers put a process's rank (MPICH's hydra, Open MPI, PMIx, MVAPICH, Slurm's srun).
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")


class Stop(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread by the start-up handlers."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_pending: list[int] = []  # the signal that arrived (only the first counts)
_raising: list[bool] = [False]  # while the command's modules import: only noted; then raised


def _stop(signum, frame) -> None:
    if _pending:  # already stopping: let the clean-up finish
        return
    _pending.append(signum)
    if _raising[0]:
        raise Stop(signum)


def _unraisable(info) -> None:
    """``sys.unraisablehook`` from :func:`guard` on: a :class:`Stop` raised where Python can only report it
    (a weakref callback or ``__del__`` run by the garbage collector) is dropped without a traceback, since the
    signal is noted in ``_pending`` and acted on; anything else goes to the hook that was there before."""
    if isinstance(info.exc_value, Stop):
        return
    _previous_unraisablehook[0](info)


_previous_unraisablehook: list = [sys.unraisablehook]


def stopped() -> int | None:
    """The signal that stopped this command (SIGINT or SIGTERM), or None."""
    return _pending[0] if _pending else None


def launcher_rank() -> int | None:
    """This process's rank as its MPI launcher set it in the environment (None outside a launcher)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def is_parallel_follower(argv: Sequence[str]) -> bool:
    """True in a rank other than 0 of a ``--parallel`` run: rank 0 speaks and decides for it."""
    return PARALLEL_FLAG in argv and (launcher_rank() or 0) > 0


def guard(argv: Sequence[str] | None = None) -> None:
    """Install the start-up handlers (see the module docstring); only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        return
    argv = sys.argv[1:] if argv is None else argv
    action = signal.SIG_IGN if is_parallel_follower(argv) else _stop
    if sys.unraisablehook is not _unraisable:
        _previous_unraisablehook[0] = sys.unraisablehook
        sys.unraisablehook = _unraisable
    for sig in SIGNALS:
        signal.signal(sig, action)
    release_signals()  # a parent that held them over our start-up (a sweep does): they arrive now


SIGNALS = (signal.SIGINT, signal.SIGTERM)


def hold_signals() -> None:
    """Hold SIGINT and SIGTERM (the kernel keeps them pending) until :func:`release_signals`: around work
    that must not be cut in two (MPI's start-up, which every rank must finish), and in a child between
    fork and exec, so that its interpreter's start-up cannot be cut either (the mask is inherited)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def release_signals() -> None:
    """Let SIGINT and SIGTERM through again; one that arrived meanwhile is handled now."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def mpi_world():
    """Start MPI and make the one collective every rank of a ``--parallel`` run makes before rank 0's first
    word (each finds its rank among the ranks on its host, and how many they are); returns ``(comm, rank,
    size, local rank, ranks on this host or None)``. Every way rank 0 goes, it passes here first, so the
    others are never left in a collective it did not join."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local, here = node.Get_rank(), node.Get_size()
    except Exception:  # noqa: BLE001 -- an MPI without shared-memory splits: the world rank will do
        local, here = comm.Get_rank(), None
    return comm, comm.Get_rank(), comm.Get_size(), local, here


def release_mpi_ranks(status: int) -> None:
    """Rank 0 of a ``--parallel`` run stops before the pipeline has started: the other ranks wait for its
    first word (after MPI's start-up and :func:`mpi_world`, which wait for every rank), so both are done
    here if they were not, and that word is "exit with ``status``". A broadcast of a few bytes from the
    root does not wait for the others to receive it."""
    comm, _, size, _, _ = mpi_world()
    if size > 1:
        comm.bcast(("abort", status), root=0)


def command(module: str, call: Callable[[Callable[..., int]], int], function: str = "main") -> int:
    """Import ``module`` and return ``call(module.function)``, the exit status of a command, with the signal
    handlers installed before ``module`` is imported (``call`` passes the command's own arguments).

    While the imports run, a signal is only noted: raised in the middle of an import it could come out
    as another exception (Python wraps one raised in ``__set_name__`` in a RuntimeError, say) and leave
    a half-imported module; the command stops once they are done, having written nothing. From then on
    it raises :class:`Stop`, and whatever escapes the command after a signal (a Stop, or an exception
    that a library made of it) is that interruption: one line, status 130."""
    argv = sys.argv[1:]
    guard(argv)
    main = getattr(importlib.import_module(module), function)
    if _pending:
        if PARALLEL_FLAG in argv and not launcher_rank():
            with contextlib.suppress(Exception):  # no MPI here (ImportError): no rank waits
                release_mpi_ranks(EXIT_INTERRUPTED)
        print(f"interrupted by {signal.Signals(_pending[0]).name} while starting; nothing was written",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if PARALLEL_FLAG in argv:
        # Rank 0's word is awaited by the other ranks from their first collective on: hold the signals
        # until :func:`bioplaus.parallel.main_parallel` has MPI up and can tell them how to end.
        hold_signals()
    _raising[0] = True
    try:
        return call(main)
    except BaseException as exc:
        if not _pending or isinstance(exc, SystemExit):
            raise
        print(f"interrupted by {signal.Signals(_pending[0]).name}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
