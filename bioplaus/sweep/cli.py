"""The sweep's command line: ``python sims/sweep.py ...`` (see :mod:`bioplaus.sweep`)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import sys
from collections.abc import Sequence

from bioplaus.errors import MPI_INSTALL, ConfigError, sentence
from bioplaus.files import (
    FileLock,
    PathError,
    append_regular,
    check_folder_writable,
    is_storage_failure,
    make_folders,
    probe_folder,
    refuse_unless_regular,
    remove_folders,
)
from bioplaus.program import DEFAULT as DEFAULT_PROGRAM
from bioplaus.program import Program
from bioplaus.sweep.processes import LocalPool, MPIPool, mpi_executor
from bioplaus.sweep.report import report
from bioplaus.sweep.runs import (
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_OK,
    EXIT_USAGE,
    Plan,
    SweepError,
    build_runs,
    check_with_cli,
    expand_recipes,
    inspect,
    int_option,
    merge_settings,
    parse_sets,
    settings_from_table,
)
from bioplaus.sweep.scheduler import Sweep
from bioplaus.threads import usable_cores


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's errors -> our one-sentence form, exit 2
        raise SweepError(message)


# ---------------------------------------------------------------------- parsing the sweep
_EPILOG = """\
logs: DIR/<recipe>[-<flag><value>...]-s<seed>.h5; only flags given several values are in the name
  (--set lr=1e-3,5e-4 -> <recipe>-lr1e-3-s1.h5 and <recipe>-lr5e-4-s1.h5); console output: DIR/<name>.out
again: the same command skips completed runs, resumes interrupted or killed ones, extends completed ones
  to a larger --epochs, and refuses (status 2, nothing written) logs of another configuration; a second
  sweep into the same folder waits for the first to end, then carries on with what is left
--config FILE.toml: a [sweep] table (recipes, seeds, out_dir, epochs, jobs, threads_per_job, ranks_per_run,
  keep_checkpoint) and a [run] table (every run's settings; a list is a grid); the options typed win
MPI: mpiexec -n K python -m mpi4py.futures {sweep} ...  (K-1 workers, one run each at a time)
layer-parallel runs: --ranks-per-run K starts each run as mpiexec -n K {run} --parallel layers
exit status: 0 every run ended (completed or diverged), 1 some run failed, 2 bad input,
  74 an I/O failure (disk full?), 130 interrupted
"""
# The [sweep] table of a sweep's configuration file: its keys and the options they stand for.
FILE_OPTIONS = {"recipes": "recipes", "seeds": "seeds", "out_dir": "out_dir", "epochs": "epochs", "jobs": "jobs",
                "threads_per_job": "threads", "ranks_per_run": "ranks", "keep_checkpoint": "keep_checkpoint"}


def build_parser(program: Program = DEFAULT_PROGRAM) -> argparse.ArgumentParser:
    script = program.sweep.startswith("python ") and program.sweep.endswith(".py")  # a checkout's sims/sweep.py
    p = _Parser(prog=program.sweep, description=f"Run recipes (and flag grids) x seeds, each an ordinary "
                f"{program.run} run with its own log; or report on a folder of logs ({program.report} DIR).",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog=_EPILOG.format(sweep=program.sweep[len("python "):] if script else "-m bioplaus sweep",
                                      run=program.run))
    p.add_argument("--recipes", nargs="+", metavar="PATTERN", help="recipe names or glob patterns (see "
                   f"{program.recipes})")
    p.add_argument("--seeds", nargs="+", metavar="S", help="seeds (integers >= 0), default 1")
    p.add_argument("--out-dir", dest="out_dir", metavar="DIR", help="where the logs go (created if missing)")
    p.add_argument("--epochs", metavar="N", help="epochs per run instead of the recipe's (the recipe's learning-rate "
                   "milestones scaled to them, unless --set gives lr_decay_milestones)")
    p.add_argument("--config", metavar="FILE.toml", help="the sweep's options and its runs' settings from a TOML "
                   "file (see below); the options typed win")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FLAG=VALUE[,VALUE...]",
                   help=f"a {program.run} flag for every run (lr=1e-3, num-hidden=16, batch_norm=false, "
                        "'lr_decay_milestones=50 75'); several comma-separated values make a grid")
    p.add_argument("--jobs", metavar="J", help="runs at a time on this machine (default 1; under MPI: one "
                   "per worker)")
    p.add_argument("--threads-per-job", dest="threads", metavar="T", help="each run's --threads (of each of its "
                   "ranks with --ranks-per-run; default: the cores this process may use divided by --jobs and by "
                   "--ranks-per-run; 1 under MPI)")
    p.add_argument("--ranks-per-run", dest="ranks", metavar="K", help="train each run's layers in parallel "
                   f"over K MPI ranks (mpiexec -n K {program.run} --parallel layers ...; local rules only; "
                   "same numbers as a run in one process)")
    p.add_argument("--keep-checkpoint", dest="keep_checkpoint", choices=("all", "last", "none"),
                   help="each run's --keep-checkpoint (default last: a completed run can be extended to a larger "
                        "--epochs; none: removed when a run completes)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print what each run would do and "
                   "exit; writes nothing")
    p.add_argument("--report", metavar="DIR", help="write DIR/results.md and .png (per setting) and .csv (per "
                   "run) from the logs in DIR and print the table")
    p.add_argument("--layout", choices=("recipes", "paper"), default="recipes",
                   help="report layout: one row per recipe and setting, or the paper's models x variants")
    return p


# ---------------------------------------------------------------------- the command line
RECORD = "sweeps.jsonl"  # DIR/sweeps.jsonl: each sweep's command and machine, one JSON object a line
SWEEP_LOCK = ".sweep.lock"  # DIR/.sweep.lock: held by the sweep writing into DIR (kept for good, like a run's)


def _check_out_dir(path: str, probe: bool = False) -> None:
    """The out-dir can be written (``probe``: tried for real, which changes its modification time, so it
    comes last), and the files the sweep keeps there are absent or regular files."""
    try:
        if probe:
            probe_folder(os.path.join(path, "*.h5"), "--out-dir")
            return
        check_folder_writable(os.path.join(path, "*.h5"), "--out-dir")
        refuse_unless_regular(os.path.join(path, RECORD), "the sweep's record")
        refuse_unless_regular(os.path.join(path, SWEEP_LOCK), "the sweep's lock file")
    except PathError as exc:
        raise SweepError(f"--out-dir {path}: {exc}") from None


def default_run_script() -> str:
    """``sims/run.py`` of the checkout this package sits in (``<root>/bioplaus/sweep/cli.py``)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "sims", "run.py")


def run_command(run_script: str | None) -> list[str]:
    """How the sweep starts a run: ``python RUN_SCRIPT`` (a checkout's sims/run.py), or, with none given,
    ``python -m bioplaus run`` (the installed package: no checkout needed)."""
    return [sys.executable, run_script] if run_script else [sys.executable, "-m", "bioplaus", "run"]


def _file_option(key: str, value, path: str):
    """A [sweep] value as the option's text (lists of texts for recipes and seeds)."""
    where = f"{key} in the [sweep] table of {path}"
    if key == "recipes":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
            raise SweepError(f"{where} takes a recipe name or a list of names and patterns, not {value!r}")
        return items
    if key == "seeds":
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise SweepError(f"{where} takes a seed or a list of seeds (integers), not {value!r}")
        return [str(v) for v in items]
    if key in ("out_dir", "keep_checkpoint"):
        if not isinstance(value, str):
            raise SweepError(f"{where} takes text, not {value!r}")
        if key == "keep_checkpoint" and value not in ("all", "last", "none"):
            raise SweepError(f"{where} takes all, last or none, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise SweepError(f"{where} takes an integer, not {value!r}")
    return str(value)


def read_config_file(ns: argparse.Namespace) -> list:
    """Fill the options not typed from ``--config FILE.toml``'s [sweep] table; returns its [run] table as
    Settings (the typed --set values are merged over them later). Raises SweepError."""
    from bioplaus.settings import read_toml

    path = ns.config
    try:
        doc = read_toml(path)
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    for key, table in doc.items():
        if key not in ("sweep", "run") or not isinstance(table, dict):
            raise SweepError(f"{path} has {key!r} at its top level; a sweep's configuration has a [sweep] table (its "
                             "options) and a [run] table (every run's settings)")
    for key, value in doc.get("sweep", {}).items():
        name = key.replace("-", "_")
        if name not in FILE_OPTIONS:
            import difflib

            close = difflib.get_close_matches(name, list(FILE_OPTIONS), n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else f" (the keys: {', '.join(FILE_OPTIONS)})"
            raise SweepError(f"unknown key {key!r} in the [sweep] table of {path}{hint}")
        dest = FILE_OPTIONS[name]
        text = _file_option(name, value, path)
        if getattr(ns, dest) is None:  # typed options win
            setattr(ns, dest, text)
    return settings_from_table(doc.get("run", {}), path)


def find_mpiexec() -> str:
    """The ``mpiexec`` beside this Python (the ``[mpi]`` extra's) or on the PATH. Raises SweepError."""
    import importlib.util

    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if not found or importlib.util.find_spec("mpi4py") is None:
        raise SweepError("--ranks-per-run starts each run under mpiexec, and this Python has no mpiexec or no "
                         f"mpi4py; install them with {MPI_INSTALL}")
    return found


def prepare(ns: argparse.Namespace, program: Program = DEFAULT_PROGRAM) -> tuple[list[Plan], str]:
    """Every check, reading only: the plans of the runs and the out-dir. Raises SweepError.
    (``ns.ranks``, when given, is already an int of 2 or more.)"""
    if not ns.recipes:
        raise SweepError("give --recipes PATTERN [PATTERN ...] and --out-dir DIR (or a --config file with them), or "
                         "--report DIR")
    if not ns.out_dir:
        raise SweepError("--out-dir DIR is needed: where the run logs go")
    recipes = expand_recipes(ns.recipes, program.recipes)
    settings = merge_settings(getattr(ns, "file_settings", None) or [], parse_sets(ns.sets))
    seeds = [int_option(s, "--seeds", 0) for s in (ns.seeds or ["1"])]
    if len(set(seeds)) < len(seeds):
        raise SweepError("--seeds repeats a seed")
    epochs = int_option(ns.epochs, "--epochs", 1) if ns.epochs is not None else None
    out_dir = os.path.normpath(ns.out_dir)
    runs = build_runs(recipes, seeds, epochs, settings, out_dir, getattr(ns, "keep_checkpoint", None))
    check_with_cli(runs, ["--parallel", "layers", "--ranks", str(ns.ranks)] if ns.ranks else [])
    _check_out_dir(out_dir)
    plans = [inspect(r) for r in runs]
    if not ns.dry_run:
        _check_out_dir(out_dir, probe=True)  # the one check that writes (and removes): last
    return plans, out_dir


def _record(out_dir: str, argv: Sequence[str], pool, threads: int | None, ranks: int | None = None,
            program: Program = DEFAULT_PROGRAM) -> None:
    """Append this sweep's command and machine to ``DIR/sweeps.jsonl`` (the report quotes them)."""
    entry = {"started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
             "command": " ".join([program.sweep, *map(shlex.quote, argv)]), "host": platform.node(),
             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
             "python": platform.python_version(), "jobs": pool.slots, "mpi": pool.mpi, "threads_per_job": threads,
             "ranks_per_run": ranks or 1}
    with append_regular(os.path.join(out_dir, RECORD), "the sweep's record") as fh:
        fh.write((json.dumps(entry) + "\n").encode("utf-8"))


def _start_out_dir(out_dir: str, argv: Sequence[str], pool, threads: int | None, ranks: int | None,
                   say, program: Program = DEFAULT_PROGRAM) -> tuple[int | None, FileLock | None]:
    """Create the out-dir, take its sweep lock (waiting, with a word, while another sweep holds it) and
    record the sweep there. Returns ``(None, lock)`` when done, else ``(exit status, None)`` with a
    sentence said and anything this call created removed."""
    made: list[str] = []
    lock = None
    try:
        made = make_folders(out_dir)
        lock = FileLock(os.path.join(out_dir, SWEEP_LOCK))
        if not lock.take():
            say(f"sweep: another sweep is writing into {out_dir}; waiting for it to end (Ctrl-C stops this one)")
            lock.take(wait=True)
        _record(out_dir, argv, pool, threads, ranks, program)
        return None, lock
    except (OSError, PathError, KeyboardInterrupt) as exc:
        if lock is not None:
            if lock.created:  # as a run does with its own lock: a refused start leaves nothing behind
                with contextlib.suppress(OSError):
                    os.unlink(lock.path)
            lock.release()
        if made:  # a folder this call made: the record in it is this call's too
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(out_dir, RECORD))
        remove_folders(made)
        if isinstance(exc, KeyboardInterrupt):
            print("interrupted before any run started", file=sys.stderr)
            return EXIT_INTERRUPTED, None
        if isinstance(exc, PathError):
            print(f"error: {sentence(str(exc))}", file=sys.stderr)
            return EXIT_USAGE, None
        if is_storage_failure(exc):
            print(f"error: {sentence(f'cannot write into {out_dir}: {exc.strerror or exc}')} Nothing was "
                  "trained; free space and run it again.", file=sys.stderr)
            return EXIT_IO, None
        print(f"error: {sentence(f'cannot write into --out-dir {out_dir}: {(exc.strerror or str(exc)).lower()}')}",
              file=sys.stderr)
        return EXIT_USAGE, None


def main(argv: Sequence[str] | None = None, run_script: str | None = None, out=None,
         program: Program | None = None) -> int:
    """The sweep's command line; returns the exit status. ``run_script``: the sims/run.py to start (None:
    ``python -m bioplaus run``). ``program``: how the user started it (the messages quote it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    program = program or DEFAULT_PROGRAM
    try:
        try:
            ns = build_parser(program).parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if ns.report:
            if ns.recipes or ns.out_dir or ns.config:
                raise SweepError("--report DIR reads logs; give it without --recipes, --out-dir and --config")
            try:
                return report(ns.report, ns.layout, out=out, command=program.report)
            except OSError as exc:
                if not is_storage_failure(exc):
                    raise
                print(f"error: {sentence(f'cannot write the report into {ns.report}: {exc.strerror or exc}')} "
                      "Each report file is whole (the old one or the new one); free space and run it again.", file=sys.stderr)
                return EXIT_IO
        ns.file_settings = read_config_file(ns) if ns.config is not None else []
        jobs = int_option(ns.jobs, "--jobs", 1) if ns.jobs is not None else None
        threads = int_option(ns.threads, "--threads-per-job", 1) if ns.threads is not None else None
        ns.ranks = int_option(ns.ranks, "--ranks-per-run", 2) if ns.ranks is not None else None
        launcher = [find_mpiexec(), "-n", str(ns.ranks)] if ns.ranks else []
        plans, out_dir = prepare(ns, program)
        if run_script is not None and not os.path.isfile(run_script):
            raise SweepError(f"cannot find sims/run.py at {run_script}")
    except SweepError as exc:
        print(f"error: {sentence(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted before any run started; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED

    counts = {a: sum(1 for p in plans if p.action == a) for a in ("new", "resume", "extend", "done", "diverged",
                                                                   "busy")}
    summary = ", ".join(f"{n} {a}" for a, n in counts.items() if n)
    if ns.dry_run:
        for p in plans:
            print(f"{p.action:9s} {p.spec.path}" + (f"  ({p.detail})" if p.detail else ""), file=out)
        print(f"{len(plans)} runs: {summary}", file=out)
        return EXIT_OK

    executor = mpi_executor()
    if executor is not None and ns.ranks:
        executor.shutdown(wait=False)
        print("error: --ranks-per-run starts an mpiexec for each run, which an MPI worker cannot do; run the "
              "sweep without mpiexec (with --jobs), or give each worker one process per run.", file=sys.stderr)
        return EXIT_USAGE
    if executor is not None:
        pool = MPIPool(executor)
        threads = threads or 1
        where = f"{pool.slots} MPI workers"
        if jobs is not None:
            print("sweep: --jobs is ignored under MPI (each worker runs one run at a time)", file=out)
    else:
        pool = LocalPool(jobs or 1)
        threads = threads or max(1, usable_cores() // (pool.slots * (ns.ranks or 1)))
        where = f"{pool.slots} at a time" + (f", each over {ns.ranks} MPI ranks" if ns.ranks else "")
    status, lock = _start_out_dir(out_dir, argv, pool, threads, ns.ranks,
                                  lambda line: print(line, file=out, flush=True), program)
    if status is not None:
        pool.close()
        return status
    try:
        try:  # another sweep may have worked meanwhile: look again (it saw the same configurations)
            plans = [inspect(p.spec) for p in plans]
        except SweepError as exc:
            print(f"error: {sentence(str(exc))}", file=sys.stderr)
            pool.close()
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("interrupted before any run started", file=sys.stderr)
            pool.close()
            return EXIT_INTERRUPTED
        counts = {a: sum(1 for p in plans if p.action == a) for a in counts}
        summary = ", ".join(f"{n} {a}" for a, n in counts.items() if n)
        print(f"sweep: {len(plans)} runs into {out_dir}: {summary}; {where}, {threads} thread"
              f"{'s' if threads != 1 else ''} each", file=out, flush=True)
        run_flags = ["--parallel", "layers"] if ns.ranks else []
        return Sweep(plans, pool, run_command(run_script), out_dir, threads, out=out, launcher=launcher,
                     run_flags=run_flags, report=program.report).run()
    finally:
        lock.release()
