"""Sweeps: recipes (and flag grids) × seeds, each an ordinary run of ``sims/run.py`` with its own log.

``python sims/sweep.py --recipes PATTERN [PATTERN ...] --seeds 1 2 3 --out-dir DIR`` expands recipe
names or glob patterns (``fashion-mnist-mlp-*``), the values of ``--set FLAG=VALUE[,VALUE...]`` and
the seeds into runs, and starts each one as a subprocess ``python sims/run.py --recipe NAME --seed S
--out DIR/<name>.h5 --no-progress [--epochs N] [flags]`` in a process group of its own (DESIGN.md §8).

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
===============================================  ==================================================

"Another configuration" compares every field but ``device`` and ``data_dir`` (which a resumed run may
change) and ``epochs`` (see above).

**Running.** ``--jobs J`` runs J at a time on this machine, each child with ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to ``--threads-per-job`` (default: the CPUs / J).
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
``DIR/results.md``, ``DIR/results.csv`` and ``DIR/results.png`` (see
:func:`bioplaus.analysis.results_table`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import datetime as _dt
import fnmatch
import functools
import itertools
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bioplaus.analysis import duration_text
from bioplaus.config import Config, ConfigError

try:  # POSIX: see whether a live process holds a run's lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_IO, EXIT_INTERRUPTED = 0, 1, 2, 74, 130
RUN_EXIT_DIVERGED, RUN_EXIT_USAGE, RUN_EXIT_IO, RUN_EXIT_INTERRUPTED = 1, 2, 74, 130

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Fields a resumed run may change, so a log that differs only there is the same run.
_NOT_IDENTITY = ("device", "data_dir")
# Fields with their own option in the sweep.
_OWN_OPTION = {"seed": "--seeds", "epochs": "--epochs"}
HEARTBEAT_S = 300.0  # a progress line at least this often while runs go on
POLL_S = 0.2


class SweepError(Exception):
    """Bad input; ``str(e)`` is the one sentence shown after ``error: ``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's errors -> our one-sentence form, exit 2
        raise SweepError(message)


def _sentence(message: str) -> str:
    text = " ".join(str(message).split())
    return text if text.endswith((".", "?", "!")) else text + "."


# ---------------------------------------------------------------------- parsing the sweep
_EPILOG = """\
logs: DIR/<recipe>[-<flag><value>...]-s<seed>.h5; only flags given several values are in the name
  (--set lr=1e-3,5e-4 -> <recipe>-lr1e-3-s1.h5 and <recipe>-lr5e-4-s1.h5); console output: DIR/<name>.out
again: the same command skips completed runs, resumes interrupted or killed ones, extends completed ones
  to a larger --epochs, and refuses (status 2, nothing written) logs of another configuration
MPI: mpiexec -n K python -m mpi4py.futures sims/sweep.py ...  (K-1 workers, one run each at a time)
layer-parallel runs: --ranks-per-run K starts each run as mpiexec -n K python sims/run.py --parallel layers
exit status: 0 every run ended (completed or diverged), 1 some run failed, 2 bad input,
  74 an I/O failure (disk full?), 130 interrupted
"""

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sims/sweep.py", description="Run recipes (and flag grids) x seeds, each an ordinary "
                "sims/run.py run with its own log; or report on a folder of logs.",
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG)
    p.add_argument("--recipes", nargs="+", metavar="PATTERN", help="recipe names or glob patterns (see "
                   "python sims/run.py --list-recipes)")
    p.add_argument("--seeds", nargs="+", metavar="S", help="seeds (integers >= 0), default 1")
    p.add_argument("--out-dir", dest="out_dir", metavar="DIR", help="where the logs go (created if missing)")
    p.add_argument("--epochs", metavar="N", help="epochs per run instead of the recipe's")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FLAG=VALUE[,VALUE...]",
                   help="a sims/run.py flag for every run (lr=1e-3, num-hidden=16, batch_norm=false, "
                        "'lr_decay_milestones=50 75'); several comma-separated values make a grid")
    p.add_argument("--jobs", metavar="J", help="runs at a time on this machine (default 1; under MPI: one "
                   "per worker)")
    p.add_argument("--threads-per-job", dest="threads", metavar="T", help="BLAS/OpenMP threads of each run "
                   "(of each of its ranks with --ranks-per-run; default: the CPUs divided by --jobs and by "
                   "--ranks-per-run; 1 under MPI)")
    p.add_argument("--ranks-per-run", dest="ranks", metavar="K", help="train each run's layers in parallel "
                   "over K MPI ranks (mpiexec -n K python sims/run.py --parallel layers ...; local rules only; "
                   "same numbers as a run in one process)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print what each run would do and "
                   "exit; writes nothing")
    p.add_argument("--report", metavar="DIR", help="write DIR/results.md, .csv and .png from the logs in DIR "
                   "and print the table")
    p.add_argument("--layout", choices=("recipes", "paper"), default="recipes",
                   help="report layout: one row per recipe and setting, or the paper's models x variants")
    return p


def _int(text: str, what: str, low: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise SweepError(f"{what} takes an integer, not {text!r}") from None
    if value < low:
        raise SweepError(f"{what} must be at least {low}, not {value}")
    return value


def expand_recipes(patterns: Sequence[str]) -> list[str]:
    """Recipe names matching names or glob patterns, in the order given (each pattern in the
    recipes' own order), without repeats. Raises SweepError for a pattern that matches nothing."""
    from bioplaus.recipes import list_recipes

    names = list_recipes()
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            if any(c in pattern for c in "*?["):
                raise SweepError(f"no recipe matches {pattern!r}; see python sims/run.py --list-recipes")
            import difflib

            close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else "; see python sims/run.py --list-recipes"
            raise SweepError(f"unknown recipe {pattern!r}{hint}")
        out.extend(h for h in hits if h not in out)
    return out


@dataclasses.dataclass(frozen=True)
class Setting:
    """One ``--set``: a Config field and its values, each as typed and as parsed."""

    field: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]

    @property
    def is_grid(self) -> bool:
        return len(self.values) > 1


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(Config)}


def _parse_value(field: str, text: str, annotation: str) -> Any:
    text = text.strip()
    if annotation.startswith("tuple"):
        parts = text.replace(":", " ").split()
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise SweepError(f"--set {field} takes space-separated integers, not {text!r}") from None
    if annotation.startswith("bool"):
        low = text.lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise SweepError(f"--set {field} is true or false, not {text!r}")
    if text == "":
        raise SweepError(f"--set {field} needs a value")
    if annotation.startswith("int"):
        try:
            return int(text)
        except ValueError:
            raise SweepError(f"--set {field} takes an integer, not {text!r}") from None
    if annotation.startswith("float"):
        try:
            value = float(text)
        except ValueError:
            raise SweepError(f"--set {field} takes a number, not {text!r}") from None
        if not math.isfinite(value):
            raise SweepError(f"--set {field} takes a finite number, not {text!r}")
        return value
    return text


def parse_sets(items: Sequence[str]) -> list[Setting]:
    """``FLAG=VALUE[,VALUE...]`` items -> Settings. FLAG is a Config field, with ``_`` or ``-``
    (``num_hidden``, ``--num-hidden``). A list-valued flag takes space-separated integers per value."""
    types = _field_types()
    out: list[Setting] = []
    for item in items:
        key, eq, rest = item.partition("=")
        field = key.strip().lstrip("-").replace("-", "_")
        if not eq or not field:
            raise SweepError(f"--set takes FLAG=VALUE, not {item!r}")
        if field in _OWN_OPTION:
            raise SweepError(f"--set {field} is not allowed; use {_OWN_OPTION[field]}")
        if field not in types:
            import difflib

            close = difflib.get_close_matches(field, list(types), n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise SweepError(f"--set {key.strip()}: sims/run.py has no flag --{field.replace('_', '-')}{hint}")
        if any(s.field == field for s in out):
            raise SweepError(f"--set {field} is given twice; give a grid as {field}=A,B")
        texts = tuple(t.strip() for t in rest.split(","))
        values = tuple(_parse_value(field, t, types[field]) for t in texts)
        if len(set(values)) < len(values):
            raise SweepError(f"--set {field} repeats a value ({rest})")
        out.append(Setting(field, texts, values))
    return out


def _cli_flags(field: str, value: Any, text: str, recipe_value: Any) -> list[str]:
    """How sims/run.py is told ``field = value``."""
    flag = "--" + field.replace("_", "-")
    if field == "batch_norm":
        if value:
            if recipe_value is False:
                raise SweepError("--set batch_norm=true cannot turn batch norm back on: sims/run.py has only "
                                 "--no-batch-norm")
            return []
        return ["--no-batch-norm"]
    if field == "cutout":
        if not value:
            if recipe_value is True:
                raise SweepError("--set cutout=false cannot turn cutout off: sims/run.py has only --cutout")
            return []
        return ["--cutout"]
    if isinstance(value, bool):
        raise SweepError(f"--set {field} cannot be passed to sims/run.py")
    if isinstance(value, tuple):
        return [flag, *map(str, value)]
    return [flag, text]


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]")


def point_label(field: str, text: str) -> str:
    """A grid point's part of a run's name: ``lr`` ``1e-3`` -> ``lr1e-3``; ``num_hidden`` ``16`` -> ``num-hidden16``."""
    value = _NAME_UNSAFE.sub("_", "_".join(text.split()))
    return field.replace("_", "-") + value


def run_name(recipe: str, point: Sequence[tuple[str, str]], seed: int) -> str:
    """``<recipe>[-<flag><value>...]-s<seed>``: the stem of the run's log (see the module docstring)."""
    return "-".join([recipe, *(point_label(f, t) for f, t in point), f"s{seed}"])


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: what sims/run.py is asked for and the configuration it will log."""

    name: str
    recipe: str
    seed: int
    point: tuple[tuple[str, str], ...]  # the grid point: (field, value as typed)
    flags: tuple[str, ...]  # sims/run.py flags of the --set values (grid point included)
    epochs_flag: int | None  # --epochs, or None: the recipe's
    config: Config  # the resolved configuration the log will hold
    path: str  # DIR/<name>.h5

    @property
    def group(self) -> str:
        """The run without its seed (runs that differ only in seed share it)."""
        return "-".join([self.recipe, *(point_label(f, t) for f, t in self.point)])

    def new_argv(self) -> list[str]:
        argv = ["--recipe", self.recipe, "--seed", str(self.seed), "--out", self.path, "--no-progress"]
        if self.epochs_flag is not None:
            argv += ["--epochs", str(self.epochs_flag)]
        return argv + list(self.flags)

    def resume_argv(self) -> list[str]:
        argv = ["--resume", self.path, "--no-progress", "--epochs", str(self.config.epochs)]
        c = self.config
        if "--device" in self.flags:
            argv += ["--device", c.device]
        if "--data-dir" in self.flags and c.data_dir is not None:
            argv += ["--data-dir", c.data_dir]
        return argv


def build_runs(recipes: Sequence[str], seeds: Sequence[int], epochs: int | None, settings: Sequence[Setting],
               out_dir: str) -> list[RunSpec]:
    """Every (seed, recipe, grid point) as a RunSpec, seed-major (seed 1 of every recipe first, so a
    first full table comes early). Raises SweepError for a setting a recipe cannot take."""
    from bioplaus.recipes import get_recipe

    singles = [s for s in settings if not s.is_grid]
    grids = [s for s in settings if s.is_grid]
    points = list(itertools.product(*[[(s.field, t, v) for t, v in zip(s.texts, s.values)] for s in grids]))
    plans: dict[tuple[str, int], tuple[Config, tuple, tuple]] = {}
    for recipe in recipes:
        try:
            base = Config.from_dict(get_recipe(recipe))
        except ConfigError as exc:
            raise SweepError(str(exc)) from exc
        for i, point in enumerate(points):
            values: dict[str, Any] = {s.field: s.values[0] for s in singles}
            flags: list[str] = []
            for s in singles:
                flags += _cli_flags(s.field, s.values[0], s.texts[0], getattr(base, s.field))
            for field, text, value in point:
                values[field] = value
                flags += _cli_flags(field, value, text, getattr(base, field))
            if epochs is not None:
                values["epochs"] = epochs
            try:
                cfg = Config.from_dict(values, base=base).resolve()
            except ConfigError as exc:
                where = " ".join(f"{f}={t}" for f, t, _ in point)
                raise SweepError(f"{recipe}{' with ' + where if where else ''}: {exc}") from exc
            plans[(recipe, i)] = (cfg, tuple((f, t) for f, t, _ in point), tuple(flags))
    runs = []
    for seed in seeds:
        for recipe in recipes:
            for i in range(len(points)):
                cfg, point, flags = plans[(recipe, i)]
                name = run_name(recipe, point, seed)
                runs.append(RunSpec(name=name, recipe=recipe, seed=seed, point=point, flags=flags, epochs_flag=epochs,
                                    config=cfg.replace(seed=seed), path=os.path.join(out_dir, name + ".h5")))
    seen: dict[str, RunSpec] = {}
    for r in runs:
        if r.name in seen:
            raise SweepError(f"two runs of this sweep would share the name {r.name}; give the --set values "
                             "so that they differ in letters and digits")
        seen[r.name] = r
    same: dict[str, str] = {}
    for r in runs:
        key = json.dumps(r.config.to_dict(), sort_keys=True)
        if key in same:
            raise SweepError(f"{same[key]} and {r.name} would be the same run; a --set grid repeats a value")
        same[key] = r.name
    return runs


def check_with_cli(runs: Sequence[RunSpec], extra: Sequence[str] = ()) -> None:
    """Ask sims/run.py itself (``--describe``, in-process: it loads no data and writes nothing) whether it
    accepts each distinct recipe and setting, so a bad model, dataset or value fails before any run.
    ``extra``: flags every run gets (``--parallel layers --ranks K`` checks the rule and the split)."""
    import io

    from bioplaus.cli import main as run_main

    done: set[str] = set()
    for r in runs:
        if r.group in done:
            continue
        done.add(r.group)
        argv = ["--recipe", r.recipe, *r.flags, "--describe", *extra]
        if r.epochs_flag is not None:
            argv += ["--epochs", str(r.epochs_flag)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = run_main(argv)
        if rc != 0:
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            msg = lines[-1] if lines else f"sims/run.py exited with status {rc}"
            msg = msg[len("error:"):].strip() if msg.startswith("error:") else msg
            raise SweepError(f"{r.group}: {msg}")


# ---------------------------------------------------------------------- the state of each run's log
@dataclasses.dataclass
class Plan:
    """What the sweep does with one run: ``new``, ``resume``, ``extend``, ``done``, ``diverged`` or ``busy``."""

    spec: RunSpec
    action: str
    epochs_done: int = 0
    detail: str = ""


def lock_held(log_path: str) -> bool:
    """True when a live process holds ``<log>.lock`` (sims/run.py holds it while it writes the log)."""
    lock = log_path + ".lock"
    if fcntl is None or not os.path.exists(lock):
        return False
    try:
        with open(lock, "rb") as fh:  # read-only: looking writes nothing
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def _config_difference(have: Config, want: Config) -> str | None:
    """'lr 0.001 (this sweep: 0.0005)' for the first fields that differ, ignoring device, data_dir, epochs."""
    a, b = have.to_dict(), want.to_dict()
    diffs = [f"{k} {a[k]!r} (this sweep: {b[k]!r})" for k in a
             if k not in (*_NOT_IDENTITY, "epochs") and a[k] != b.get(k)]
    return ", ".join(diffs[:3]) if diffs else None


def inspect(spec: RunSpec) -> Plan:
    """What to do with ``spec`` given what is on disk; raises SweepError when its log is not this run's."""
    from bioplaus.log import LogError, read_run

    ckpt = spec.path + ".ckpt.npz"
    if not os.path.lexists(spec.path):
        if os.path.lexists(ckpt):
            raise SweepError(f"{ckpt} exists without its log {spec.path}; move it away and run the sweep again")
        return Plan(spec, "new")
    if os.path.isdir(spec.path):
        raise SweepError(f"{spec.path} is a directory, where this sweep would write a run log")
    try:
        run = read_run(spec.path)
    except LogError as exc:
        raise SweepError(f"{spec.path} is not a run log this sweep can use ({exc}); move it away") from exc
    diff = _config_difference(run.config, spec.config)
    if diff is not None:
        raise SweepError(f"{spec.path} holds another configuration than this sweep makes under that name "
                         f"({diff}); use another --out-dir or move the log away")
    want = spec.config.epochs
    if run.config.epochs > want:
        raise SweepError(f"{spec.path} holds a run of {run.config.epochs} epochs and this sweep asks for {want}; "
                         "use another --out-dir or the same --epochs")
    done = run.num_epochs
    busy = lock_held(spec.path)
    if run.status == "diverged":
        return Plan(spec, "diverged", done, str(run.attrs.get("message", "")))
    if run.status == "completed" and done >= want:
        return Plan(spec, "done", done)
    if busy:
        return Plan(spec, "busy", done, "being written by another process")
    if run.status == "completed":
        return Plan(spec, "extend", done, f"{done} -> {want} epochs")
    return Plan(spec, "resume", done, f"{run.status} after {done} epoch{'s' if done != 1 else ''}")


def seconds_left(left: list[tuple[str, int]], costs: dict[str, list[float]], slots: int) -> float | None:
    """The time left of runs ``left`` = [(group, epochs still to train)], ``slots`` at a time, given
    measured seconds per epoch by group (a group with none measured takes the mean of all); None
    while nothing is measured."""
    todo = [(g, n) for g, n in left if n > 0]
    if not todo:
        return 0.0
    every = [c for cs in costs.values() for c in cs]
    if not every:
        return None
    fallback = sum(every) / len(every)
    work = sum(n * (sum(costs[g]) / len(costs[g]) if costs.get(g) else fallback) for g, n in todo)
    return work / max(1, min(slots, len(todo)))


def epochs_in_log(path: str) -> int:
    """Completed epochs in a log (0 when it is missing or unreadable); cheap, for the progress line."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return int(f["epochs"]["epoch"].shape[0]) if "epoch" in f["epochs"] else 0
    except Exception:  # noqa: BLE001 -- a log being replaced, or not there yet: no progress to show
        return 0


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


def _child_setup(parent: int) -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGINT when its parent dies: a killed sweep leaves interrupted logs, not orphan runs."""
    if _prctl:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect: stop at once
            os.kill(os.getpid(), signal.SIGINT)


def _spawn(task: dict[str, Any]) -> subprocess.Popen:
    _load_prctl()
    env = dict(os.environ)
    env.update(task["env"])
    with open(task["console"], "ab") as fh:
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        fh.write(f"\n=== {stamp} {platform.node()}: {' '.join(task['argv'])}\n".encode())
        fh.flush()
        # start_new_session: a process group of its own, so a terminal's Ctrl-C reaches only the sweep,
        # which then stops each run once, with SIGINT. preexec_fn is safe here: the sweep starts runs from
        # one thread (LocalPool polls; an MPI worker runs its task on its main thread).
        return subprocess.Popen(task["argv"], stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                env=env, cwd=task["cwd"], start_new_session=True,
                                preexec_fn=functools.partial(_child_setup, os.getpid()))  # noqa: PLW1509


def _interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _tail(path: str) -> str:
    """Why a run stopped, from the end of its console output: its last ``error:`` or ``diverged:`` line of
    the latest attempt, else that attempt's last line."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
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


# ---------------------------------------------------------------------- the scheduler
class Sweep:
    """Runs the plans on a pool; prints progress; handles signals."""

    def __init__(self, plans: list[Plan], pool, run_script: str, out_dir: str, threads: int | None,
                 out=sys.stdout, launcher: Sequence[str] = (), run_flags: Sequence[str] = ()) -> None:
        self.plans = plans
        self.pool = pool
        self.run_script = run_script
        self.out_dir = out_dir
        self.threads = threads
        self.out = out
        self.launcher = list(launcher)  # e.g. mpiexec -n K: each run layer-parallel
        self.run_flags = list(run_flags)
        self.by_name = {p.spec.name: p for p in plans}
        self.queue = [p for p in plans if p.action in ("new", "resume", "extend")]
        self.waiting = [p for p in plans if p.action == "busy"]
        self.results: dict[str, dict[str, Any]] = {}
        self.running: set[str] = set()
        self.stop_signal: int | None = None
        self.signals = 0
        self.announced = False
        self.io_failure = False
        self.stop_file = os.path.join(out_dir, f".sweep-{uuid.uuid4().hex[:12]}.stop")
        self.last_line = 0.0
        self.cost: dict[str, list[float]] = {}  # group -> wall seconds per epoch of runs that ended here
        self.started: dict[str, float] = {}  # run -> time.monotonic() when this sweep started it

    # --- signals
    def _on_signal(self, signum, frame) -> None:
        # Only flags and kill() here: printing from a handler can collide with a print in progress.
        self.signals += 1
        if self.stop_signal is None:
            self.stop_signal = signum
            self.pool.interrupt(signal.SIGINT)
        else:
            self.pool.interrupt(signal.SIGKILL)

    def _announce_stop(self) -> None:
        self.announced = True
        self.say(f"sweep: {signal.Signals(self.stop_signal).name}: stopping; every run marks its log interrupted "
                 "(another Ctrl-C kills them at once)")
        if self.pool.mpi:  # the workers' runs are not our children: they watch this file
            with contextlib.suppress(OSError), open(self.stop_file, "w") as fh:
                fh.write("stop\n")

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    # --- the task of a run
    def task(self, plan: Plan) -> dict[str, Any]:
        spec = plan.spec
        argv = spec.new_argv() if plan.action == "new" else spec.resume_argv()
        env = {v: str(self.threads) for v in THREAD_VARS} if self.threads else {}
        return {"name": spec.name, "argv": [*self.launcher, sys.executable, self.run_script, *argv, *self.run_flags],
                "env": env,
                "console": os.path.join(self.out_dir, spec.name + ".out"), "cwd": os.getcwd(),
                "stop_file": self.stop_file}

    # --- progress
    def eta(self) -> float | None:
        """Seconds left: the epochs still to train × each run's seconds per epoch / the runs at a time.
        Seconds per epoch: measured on the runs of its recipe and setting that ended in this sweep, else
        on those running now (wall time since their start over the epochs they added), else on any run."""
        todo = [p for p in self.plans if p.spec.name not in self.results and p.action in
                ("new", "resume", "extend", "busy")]
        now = time.monotonic()
        live: dict[str, list[float]] = {}
        left: list[tuple[str, int]] = []
        for p in todo:
            done = p.epochs_done
            if p.spec.name in self.running:
                done = max(done, epochs_in_log(p.spec.path))
                if done > p.epochs_done and p.spec.name in self.started:
                    live.setdefault(p.spec.group, []).append((now - self.started[p.spec.name]) / (done - p.epochs_done))
            left.append((p.spec.group, max(0, p.spec.config.epochs - done)))
        costs = {g: self.cost.get(g) or live.get(g) or [] for g in {*self.cost, *live}}
        return seconds_left(left, costs, self.pool.slots)

    def progress(self) -> str:
        n = len(self.plans)
        ended = [p for p in self.plans if p.action in ("done", "diverged") or p.spec.name in self.results]
        failed = sum(1 for r in self.results.values() if r["rc"] not in (0, RUN_EXIT_DIVERGED, RUN_EXIT_INTERRUPTED))
        left = n - len(ended) - len(self.running)
        eta = self.eta()
        when = "estimating the time left" if eta is None else f"about {duration_text(eta)} left"
        extra = f" ({failed} failed)" if failed else ""
        wait = f" ({len(self.waiting)} written by another process)" if self.waiting else ""
        return f"{len(ended)}/{n} done{extra}, {len(self.running)} running, {left} left{wait}; {when}"

    def tick(self, event: str = "") -> None:
        """Print ``event`` with the progress line; with no event, a progress line now and then."""
        if event or time.monotonic() - self.last_line >= HEARTBEAT_S:
            self.last_line = time.monotonic()
            self.say(f"sweep: {event} | {self.progress()}" if event else f"sweep: {self.progress()}")

    # --- the loop
    def run(self) -> int:
        saved = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._loop()
        finally:
            for sig, old in saved.items():
                signal.signal(sig, old)
            with contextlib.suppress(OSError):
                os.unlink(self.stop_file)
            self.pool.close()
        return self.finish()

    def _loop(self) -> None:
        self.last_line = time.monotonic()
        self.say(f"sweep: {self.progress()}")
        next_look = 0.0
        while True:
            if self.stop_signal is not None and not self.announced:
                self._announce_stop()
            stopping = self.stop_signal is not None or self.io_failure
            while not stopping and self.queue and len(self.pool) < self.pool.slots:
                plan = self.queue.pop(0)
                self.pool.start(self.task(plan))
                self.running.add(plan.spec.name)
                self.started[plan.spec.name] = time.monotonic()
                what = {"new": "start", "resume": "resume", "extend": "extend"}[plan.action]
                self.tick(f"{what} {plan.spec.name}" + (f" ({plan.detail})" if plan.detail else ""))
            if not stopping and self.waiting and time.monotonic() >= next_look:
                next_look = time.monotonic() + 2.0
                self._look_at_waiting()
            if not len(self.pool) and (stopping or (not self.queue and not self.waiting)):
                return
            for res in self.pool.finished(timeout=1.0 if len(self.pool) else 2.0):
                self._ended(res)
            self.tick()

    def _look_at_waiting(self) -> None:
        for plan in list(self.waiting):
            if lock_held(plan.spec.path):
                continue
            self.waiting.remove(plan)
            try:
                fresh = inspect(plan.spec)
            except SweepError as exc:
                self.results[plan.spec.name] = {"name": plan.spec.name, "rc": -1, "seconds": 0.0, "tail": str(exc)}
                continue
            self.by_name[plan.spec.name] = fresh
            self.plans[self.plans.index(plan)] = fresh
            if fresh.action in ("done", "diverged"):
                self.tick(f"{plan.spec.name} was finished by another process ({fresh.action})")
            elif fresh.action == "busy":
                self.waiting.append(fresh)
            else:
                self.queue.append(fresh)

    def _ended(self, res: dict[str, Any]) -> None:
        if self.stop_signal is not None and not self.announced:
            self._announce_stop()
        name, rc = res["name"], res["rc"]
        self.running.discard(name)
        plan = self.by_name[name]
        if rc == RUN_EXIT_INTERRUPTED and self.stop_signal is not None:
            self.tick(f"{name} interrupted after {duration_text(res['seconds'])}; it resumes next time")
            return  # not a result: it is still to do
        self.results[name] = res
        trained = max(0, epochs_in_log(plan.spec.path) - plan.epochs_done)
        console = os.path.join(self.out_dir, name + ".out")
        if rc == 0:
            if trained:
                self.cost.setdefault(plan.spec.group, []).append(res["seconds"] / trained)
            self.tick(f"done {name} ({duration_text(res['seconds'])})")
        elif rc == RUN_EXIT_DIVERGED:
            self.tick(f"{name} diverged: {res['tail']}")
        elif rc == RUN_EXIT_IO:
            self.io_failure = True
            self.tick(f"{name} hit an I/O failure: {res['tail']}; no new run starts (free space, then run the "
                      "same command again)")
        elif rc < 0:
            why = f"killed by {signal.Signals(-rc).name}" if -rc in signal.valid_signals() else res["tail"]
            self.tick(f"{name} failed: {why}; it resumes next time (output: {console})")
        else:
            self.tick(f"{name} failed with status {rc}: {res['tail']} (output: {console})")

    def finish(self) -> int:
        skipped = sum(1 for p in self.plans if p.action == "done" and p.spec.name not in self.results)
        completed = [n for n, r in self.results.items() if r["rc"] == 0]
        diverged = [p.spec.name for p in self.plans if p.action == "diverged"] + [
            n for n, r in self.results.items() if r["rc"] == RUN_EXIT_DIVERGED]
        failed = {n: r for n, r in self.results.items() if r["rc"] not in (0, RUN_EXIT_DIVERGED)}
        unfinished = [p.spec.name for p in self.plans if p.action in ("new", "resume", "extend", "busy")
                      and p.spec.name not in self.results]
        parts = [f"{len(completed)} completed now"] + ([f"{skipped} already complete"] if skipped else [])
        if diverged:
            parts.append(f"{len(diverged)} diverged ({', '.join(diverged)})")
        if failed:
            parts.append(f"{len(failed)} failed ({', '.join(failed)})")
        if unfinished:
            parts.append(f"{len(unfinished)} not finished")
        self.say("sweep: " + ", ".join(parts) + f"; report: python sims/sweep.py --report {self.out_dir}")
        if self.stop_signal is not None:
            self.say("sweep: interrupted; run the same command again to carry on")
            return EXIT_INTERRUPTED
        if self.io_failure:
            return EXIT_IO
        if failed or unfinished:
            return EXIT_FAILED
        return EXIT_OK


# ---------------------------------------------------------------------- the command line
def _check_out_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise SweepError(f"--out-dir {path} is a file, not a folder")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise SweepError(f"cannot create --out-dir {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SweepError(f"cannot write in {probe}")


def default_run_script() -> str:
    """``sims/run.py`` of the checkout this package sits in."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sims", "run.py")


def find_mpiexec() -> str:
    """The ``mpiexec`` beside this Python (the ``[mpi]`` extra's) or on the PATH. Raises SweepError."""
    import importlib.util

    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if not found or importlib.util.find_spec("mpi4py") is None:
        raise SweepError("--ranks-per-run starts each run under mpiexec, and this Python has no mpiexec or no "
                         "mpi4py; install them with pip install \".[mpi]\" (mpi4py and MPICH from the package index)")
    return found


def prepare(ns: argparse.Namespace) -> tuple[list[Plan], str]:
    """Every check, reading only: the plans of the runs and the out-dir. Raises SweepError.
    (``ns.ranks``, when given, is already an int of 2 or more.)"""
    if not ns.recipes:
        raise SweepError("give --recipes PATTERN [PATTERN ...] and --out-dir DIR, or --report DIR")
    if not ns.out_dir:
        raise SweepError("--out-dir DIR is needed: where the run logs go")
    recipes = expand_recipes(ns.recipes)
    settings = parse_sets(ns.sets)
    seeds = [_int(s, "--seeds", 0) for s in (ns.seeds or ["1"])]
    if len(set(seeds)) < len(seeds):
        raise SweepError("--seeds repeats a seed")
    epochs = _int(ns.epochs, "--epochs", 1) if ns.epochs is not None else None
    out_dir = os.path.normpath(ns.out_dir)
    _check_out_dir(out_dir)
    runs = build_runs(recipes, seeds, epochs, settings, out_dir)
    check_with_cli(runs, ["--parallel", "layers", "--ranks", str(ns.ranks)] if ns.ranks else [])
    plans = [inspect(r) for r in runs]
    return plans, out_dir


def _record(out_dir: str, argv: Sequence[str], pool, threads: int | None, ranks: int | None = None) -> None:
    """Append this sweep's command and machine to ``DIR/sweeps.jsonl`` (the report quotes them)."""
    entry = {"started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
             "command": shlex.join(["python", "sims/sweep.py", *argv]), "host": platform.node(),
             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
             "python": platform.python_version(), "jobs": pool.slots, "mpi": pool.mpi, "threads_per_job": threads,
             "ranks_per_run": ranks or 1}
    with open(os.path.join(out_dir, "sweeps.jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def main(argv: Sequence[str] | None = None, run_script: str | None = None, out=None) -> int:
    """The sweep's command line; returns the exit status. ``run_script``: the sims/run.py to start."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    try:
        try:
            ns = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if ns.report:
            if ns.recipes or ns.out_dir:
                raise SweepError("--report DIR reads logs; give it without --recipes and --out-dir")
            return report(ns.report, ns.layout, out=out)
        jobs = _int(ns.jobs, "--jobs", 1) if ns.jobs is not None else None
        threads = _int(ns.threads, "--threads-per-job", 1) if ns.threads is not None else None
        ns.ranks = _int(ns.ranks, "--ranks-per-run", 2) if ns.ranks is not None else None
        launcher = [find_mpiexec(), "-n", str(ns.ranks)] if ns.ranks else []
        plans, out_dir = prepare(ns)
        run_script = run_script or default_run_script()
        if not os.path.isfile(run_script):
            raise SweepError(f"cannot find sims/run.py at {run_script}")
    except SweepError as exc:
        print(f"error: {_sentence(str(exc))}", file=sys.stderr)
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
        threads = threads or max(1, (os.cpu_count() or 1) // (pool.slots * (ns.ranks or 1)))
        where = f"{pool.slots} at a time" + (f", each over {ns.ranks} MPI ranks" if ns.ranks else "")
    os.makedirs(out_dir, exist_ok=True)
    _record(out_dir, argv, pool, threads, ns.ranks)
    print(f"sweep: {len(plans)} runs into {out_dir}: {summary}; {where}, {threads} thread"
          f"{'s' if threads != 1 else ''} each", file=out, flush=True)
    run_flags = ["--parallel", "layers"] if ns.ranks else []
    return Sweep(plans, pool, run_script, out_dir, threads, out=out, launcher=launcher, run_flags=run_flags).run()


# ---------------------------------------------------------------------- the report
def report(folder: str, layout: str = "recipes", out=None) -> int:
    """``--report DIR``: the results table of every log in DIR, printed and written to DIR/results.{md,csv,png}."""
    import glob

    from bioplaus import analysis
    from bioplaus.log import LogError, read_run

    out = out or sys.stdout
    if not os.path.isdir(folder):
        raise SweepError(f"--report {folder} is not a folder")
    paths = sorted(glob.glob(os.path.join(folder, "*.h5")))
    runs, bad = [], []
    for p in paths:
        try:
            runs.append(read_run(p))
        except LogError as exc:
            bad.append(f"{os.path.basename(p)} ({exc})")
    if not runs:
        raise SweepError(f"no run logs in {folder}")
    rows = analysis.results_table(runs)
    sweeps = []
    with contextlib.suppress(OSError, ValueError), open(os.path.join(folder, "sweeps.jsonl"), encoding="utf-8") as fh:
        sweeps = [json.loads(line) for line in fh if line.strip()]
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    command = shlex.join(["python", "sims/sweep.py", "--report", folder, *(["--layout", layout] if layout != "recipes"
                                                                          else [])])
    head = [f"# Results: {folder}", "",
            (f"{len(runs)} run logs ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}); "
            f"report made {_dt.datetime.now().astimezone().isoformat(timespec='seconds')} by `{command}`. "
            f"Devices: {', '.join(sorted({str(r.attrs.get('device', '?')) for r in runs}))}.")]
    if sweeps:
        head += ["", "Sweeps that wrote into this folder:", ""]
        seen = set()
        for s in sweeps:
            key = (s.get("command"), s.get("host"))
            if key in seen:
                continue
            seen.add(key)
            how = f"{s.get('jobs')} MPI workers" if s.get("mpi") else f"{s.get('jobs')} at a time"
            if (s.get("ranks_per_run") or 1) > 1:
                how += f", each run over {s['ranks_per_run']} MPI ranks (layer-parallel)"
            head.append(f"- `{s.get('command')}` on {s.get('host')} ({s.get('machine')}; {how}, "
                        f"{s.get('threads_per_job')} BLAS thread(s) each), first started {s.get('started')}")
    if bad:
        head += ["", "Not read: " + "; ".join(bad)]
    table = analysis.results_paper_markdown(rows) if layout == "paper" else analysis.results_markdown(rows)
    text = "\n".join(head) + "\n\n" + table + "\n"
    md, csv_path, png = (os.path.join(folder, f"results.{ext}") for ext in ("md", "csv", "png"))
    with open(md, "w", encoding="utf-8") as fh:
        fh.write(text)
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        fh.write(analysis.results_csv(rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = analysis.plot_results(rows)
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(text, file=out)
    print(f"wrote {md}, {csv_path}, {png}", file=out)
    for line in bad:
        print(f"warning: not read: {line}", file=sys.stderr)
    return EXIT_OK
