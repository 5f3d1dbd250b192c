"""Sweeps: recipes (and flag grids) × seeds, each an ordinary run with its own log.

``bioplaus sweep --recipes PATTERN [PATTERN ...] --seeds 1 2 3 --out-dir DIR`` (or ``python sims/sweep.py``
in a checkout) expands recipe names or glob patterns (``fashion-mnist-mlp-*``), the values of ``--set
FLAG=VALUE[,VALUE...]`` and the seeds into runs, and starts each one as a subprocess ``python -m bioplaus
run --recipe NAME --seed S --out DIR/<name>.h5 --no-progress [--epochs N] [flags] --threads T`` (the
checkout's wrapper starts its ``sims/run.py``) in a process group of its own (DESIGN.md §8). ``--config
FILE.toml`` gives the sweep's options (a ``[sweep]`` table) and its runs' settings (a ``[run]`` table,
each key a value for every run or a list for a grid); the options typed win.

**Naming.** A run's log is ``DIR/<recipe>[-<flag><value>...]-s<seed>.h5``. Only flags given several
values (a grid, ``--set lr=1e-3,5e-4``) appear in the name, in the order typed, the flag spelled with
dashes and the value as typed (characters other than letters, digits, ``.``, ``+`` and ``-`` become
``_``): ``fashion-mnist-mlp-pred-lr1e-3-s1.h5``, ``...-num-hidden16-dropout0.1-s2.h5``. A flag given one
value is the same for every run and is not in the name; the log holds the whole configuration, and
the report reads it from there, never from the name. A run's console output goes to ``DIR/<name>.out``.

**Idempotent.** Before anything is written, each run's log is inspected:

===============================================  ==================================================
the log                                          the sweep
===============================================  ==================================================
missing                                          starts the run
``completed`` with the epochs asked for          skips it
``completed`` with fewer epochs than asked       extends it (``--resume --epochs N``)
``running`` (killed) or ``interrupted``          resumes it from its checkpoint (``--resume``)
``diverged``                                     reports it and leaves it (it would diverge again)
being written by a live process (lock held)      waits for that process, then looks again
another configuration, more epochs than asked,   refuses the whole sweep: one sentence, exit 2,
unreadable, or a checkpoint without its log      nothing written
a link, a FIFO or a device at the log, its       refuses the whole sweep (the sweep opens none of
checkpoint, its lock or its ``.out``             them through a link, and none of them blocks)
===============================================  ==================================================

Every run is also checked as sims/run.py would check it (the seed, every ``--set`` value, the device,
the memory, where its data comes from, the length of its files' names) before the out-dir is made or
touched. Two sweeps into one folder (the same command started twice, say): the second waits for the
first to end (``DIR/.sweep.lock``, held while a sweep works and kept for good like a run's lock), then
looks at every run again and carries on with what is left.

"Another configuration" compares every field but ``device`` and ``data_dir`` (which a resumed run may
change) and ``epochs`` (see above).

**Running.** ``--jobs J`` runs J at a time on this machine, each child given ``--threads`` of
``--threads-per-job`` (default: the cores this process may use / J).
Under ``mpiexec -n K python -m mpi4py.futures sims/sweep.py ...`` (or ``srun``), rank 0 schedules and
the K-1 other ranks run one run each at a time (``mpi4py.futures.MPIPoolExecutor``), still as
subprocesses. ``--ranks-per-run K`` starts each run layer-parallel, as ``mpiexec -n K python sims/run.py
--parallel layers ...`` (local rules only, checked with the split before anything runs; each rank gets
``--threads-per-job`` threads); its log is the one a run in one process writes, bit for bit, so a later
sweep may carry on with or without it. A child is told to stop with SIGINT when its parent dies (Linux ``PR_SET_PDEATHSIG``), so
even a killed sweep leaves logs marked ``interrupted``, never an orphan run.

**Stopping.** Ctrl-C or SIGTERM: no new run starts, every child gets SIGINT (under MPI: through a stop
file ``DIR/.sweep-<id>.stop`` that the workers watch), the sweep waits for them to mark their logs
``interrupted`` and exits with status 130. A second signal kills the children outright (their logs
still hold every completed epoch). Running the same command again carries on.

**Exit statuses.** 0: every run has ended (``completed`` or ``diverged``); 1: some run failed (a run's
own exit status 2, a crash, a kill) or is still being written by another process; 2: bad input; 74: a
run hit an I/O failure such as a full disk (no new run is started after one; free space and run the
same command again); 130: interrupted.

``python sims/sweep.py --report DIR [--layout recipes|paper]`` reads every ``DIR/*.h5`` and writes
``DIR/results.md`` and ``DIR/results.png`` (one row per setting over its seeds, see
:func:`bioplaus.analysis.results_table`) and ``DIR/results.csv`` (one row per run, one value per cell, see
:func:`bioplaus.analysis.runs_table`).

The parts: :mod:`~bioplaus.sweep.runs` (what runs a sweep has, and the plan for each from its log),
:mod:`~bioplaus.sweep.processes` (starting and stopping one run, here or on an MPI worker),
:mod:`~bioplaus.sweep.scheduler` (the loop, progress, signals), :mod:`~bioplaus.sweep.cli` (the command
line) and :mod:`~bioplaus.sweep.report` (``--report``).
"""

from bioplaus.sweep.cli import build_parser, default_run_script, find_mpiexec, main, prepare
from bioplaus.sweep.processes import THREAD_VARS, LocalPool, MPIPool, mpi_executor, run_task
from bioplaus.sweep.report import report
from bioplaus.sweep.runs import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_OK,
    EXIT_USAGE,
    Plan,
    RunSpec,
    Setting,
    SweepError,
    build_runs,
    check_with_cli,
    epochs_in_log,
    expand_recipes,
    inspect,
    lock_held,
    parse_sets,
    run_name,
)
from bioplaus.sweep.scheduler import Sweep, seconds_left

__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_IO", "EXIT_OK", "EXIT_USAGE", "THREAD_VARS", "LocalPool", "MPIPool",
    "Plan", "RunSpec", "Setting", "Sweep", "SweepError", "build_parser", "build_runs", "check_with_cli",
    "default_run_script", "epochs_in_log", "expand_recipes", "find_mpiexec", "inspect", "lock_held", "main",
    "mpi_executor", "parse_sets", "prepare", "report", "run_name", "run_task", "seconds_left",
]
