"""What a sweep runs: recipes, ``--set`` grids and seeds expanded into RunSpecs, each checked with
sims/run.py itself, and the Plan for each from what its log on disk says (see :mod:`bioplaus.sweep`)."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import itertools
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

from bioplaus import files
from bioplaus.config import Config, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_IO, EXIT_INTERRUPTED = 0, 1, 2, 74, 130
RUN_EXIT_DIVERGED, RUN_EXIT_USAGE, RUN_EXIT_IO, RUN_EXIT_INTERRUPTED = 1, 2, 74, 130

# Fields a resumed run may change, so a log that differs only there is the same run.
_NOT_IDENTITY = ("device", "data_dir")
# Fields with their own option in the sweep.
_OWN_OPTION = {"seed": "--seeds", "epochs": "--epochs"}


class SweepError(Exception):
    """Bad input; ``str(e)`` is the one sentence shown after ``error: ``."""


def int_option(text: str, what: str, low: int) -> int:
    """An integer option's value, at least ``low``; raises SweepError naming the option ``what``."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise SweepError(f"{what} takes an integer, not {text!r}") from None
    if value < low:
        raise SweepError(f"{what} must be at least {low}, not {value}")
    return value


def expand_recipes(patterns: Sequence[str], listing: str = "python sims/run.py --list-recipes") -> list[str]:
    """Recipe names matching names or glob patterns, in the order given (each pattern in the
    recipes' own order), without repeats. Raises SweepError for a pattern that matches nothing
    (naming ``listing``, the command that lists them)."""
    from bioplaus.recipes import list_recipes

    names = list_recipes()
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            if any(c in pattern for c in "*?["):
                raise SweepError(f"no recipe matches {pattern!r}; see {listing}")
            import difflib

            close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; see {listing}"
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


def _toml_text(value: Any) -> str:
    """A TOML value as a --set value would be typed (a float in its shortest exact form)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return " ".join(_toml_text(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def settings_from_table(table: dict[str, Any], path: str) -> list[Setting]:
    """The ``[run]`` table of a sweep's configuration file as Settings: ``lr = 1e-3`` one value for every
    run, ``lr = [1e-3, 5e-4]`` a grid (for the milestones, a list of lists is a grid)."""
    types = _field_types()
    out: list[Setting] = []
    for key, value in table.items():
        field = key.replace("-", "_")
        if field in _OWN_OPTION:
            raise SweepError(f"{key} in the [run] table of {path} is the sweep's own: give it as "
                             f"{_OWN_OPTION[field].lstrip('-')} in the [sweep] table")
        if field not in types:
            import difflib

            close = difflib.get_close_matches(field, list(types), n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise SweepError(f"unknown key {key!r} in the [run] table of {path}{hint} (the keys are the run "
                             "flags' names with underscores)")
        if any(s.field == field for s in out):
            raise SweepError(f"{path} gives {field} twice in its [run] table")
        ann = types[field]
        if ann.startswith("tuple"):
            grid = isinstance(value, list) and bool(value) and all(isinstance(v, list) for v in value)
            values = value if grid else [value]
        else:
            values = value if isinstance(value, list) else [value]
        if not values:
            raise SweepError(f"{field} in the [run] table of {path} is an empty list; give a value or a list of them")
        if isinstance(value, dict) or any(isinstance(v, dict) for v in values):
            raise SweepError(f"{field} in the [run] table of {path} is a table; give a value or a list of them")
        texts = tuple(_toml_text(v) for v in values)
        try:
            parsed = tuple(_parse_value(field, t, ann) for t in texts)
        except SweepError as exc:
            raise SweepError(f"{field} in the [run] table of {path}: {str(exc).replace(f'--set {field} ', '')}") \
                from None
        if len(set(parsed)) < len(parsed):
            raise SweepError(f"{field} in the [run] table of {path} repeats a value")
        out.append(Setting(field, texts, parsed))
    return out


def merge_settings(base: Sequence[Setting], over: Sequence[Setting]) -> list[Setting]:
    """``base`` (a file's) with each field that ``over`` (the flags') gives replaced, in place; new ones after."""
    given = {s.field: s for s in over}
    merged = [given.pop(s.field, s) for s in base]
    return merged + [s for s in over if s.field in given]


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
            raise SweepError(f"--set {key.strip()}: a run has no flag --{field.replace('_', '-')}{hint}")
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
                raise SweepError("--set batch_norm=true cannot turn batch norm back on: a run has only "
                                 "--no-batch-norm")
            return []
        return ["--no-batch-norm"]
    if field == "cutout":
        if not value:
            if recipe_value is True:
                raise SweepError("--set cutout=false cannot turn cutout off: a run has only --cutout")
            return []
        return ["--cutout"]
    if isinstance(value, bool):
        raise SweepError(f"--set {field} cannot be passed to a run")
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
    derived_schedule: bool = True  # the milestones are the recipe's (scaled to --epochs), not set by the sweep
    keep_checkpoint: str | None = None  # --keep-checkpoint for the run (None: its own default, or the log's)

    @property
    def group(self) -> str:
        """The run without its seed (runs that differ only in seed share it)."""
        return "-".join([self.recipe, *(point_label(f, t) for f, t in self.point)])

    @property
    def console(self) -> str:
        """``DIR/<name>.out``: the run's console output, appended to by every attempt."""
        return self.path[: -len(files.LOG_SUFFIX)] + ".out"

    def files(self) -> dict[str, str]:
        """Every file of this run that the sweep reads or writes, by what it must be (a regular file
        or nothing): its log, checkpoint and lock (the run's own) and its console output."""
        return {"a bioplaus run log": self.path, "a bioplaus checkpoint": files.checkpoint_path(self.path),
                "a bioplaus lock file": files.lock_path(self.path), "a run's console output": self.console}

    def new_argv(self) -> list[str]:
        argv = ["--recipe", self.recipe, "--seed", str(self.seed), "--out", self.path, "--no-progress"]
        if self.epochs_flag is not None:
            argv += ["--epochs", str(self.epochs_flag)]
        if self.keep_checkpoint is not None:
            argv += ["--keep-checkpoint", self.keep_checkpoint]
        return argv + list(self.flags)

    def resume_argv(self) -> list[str]:
        argv = ["--resume", self.path, "--no-progress", "--epochs", str(self.config.epochs)]
        if self.keep_checkpoint is not None:
            argv += ["--keep-checkpoint", self.keep_checkpoint]
        c = self.config
        if "--device" in self.flags:
            argv += ["--device", c.device]
        if "--data-dir" in self.flags and c.data_dir is not None:
            argv += ["--data-dir", c.data_dir]
        return argv


def build_runs(recipes: Sequence[str], seeds: Sequence[int], epochs: int | None, settings: Sequence[Setting],
               out_dir: str, keep_checkpoint: str | None = None) -> list[RunSpec]:
    """Every (seed, recipe, grid point) as a RunSpec, seed-major (seed 1 of every recipe first, so a
    first full table comes early). Raises SweepError for a setting a recipe cannot take. Each run's
    configuration is the one sims/run.py makes of the same flags (:func:`bioplaus.settings.layered`: a
    recipe's schedule scaled to ``epochs``)."""
    from bioplaus.recipes import get_recipe
    from bioplaus.settings import layered

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
                cfg = layered(values, recipe=recipe).config
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
                try:  # the seed too is checked as the run will check it
                    seeded = cfg.replace(seed=seed)
                    seeded.validate()
                except ConfigError as exc:
                    raise SweepError(f"{name}: {exc}") from exc
                path = os.path.join(out_dir, name + files.LOG_SUFFIX)
                try:
                    files.check_name(path, "the run's log")
                except files.PathError as exc:
                    raise SweepError(f"{exc}; give --set values that make shorter names") from None
                runs.append(RunSpec(name=name, recipe=recipe, seed=seed, point=point, flags=flags, epochs_flag=epochs,
                                    config=seeded, path=path,
                                    derived_schedule=all(s.field != "lr_decay_milestones" for s in settings),
                                    keep_checkpoint=keep_checkpoint))
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
    accepts each distinct recipe and setting, so a bad model, dataset or value fails before any run;
    then make every check a run makes before it writes (:func:`bioplaus.runner.check_run`: the device,
    the memory, where the data comes from), for each distinct configuration. ``extra``: flags every
    run gets (``--parallel layers --ranks K`` checks the rule and the split)."""
    import io

    from bioplaus.cli import main as run_main
    from bioplaus.runner import BadInput, check_run

    done: set[str] = set()
    checked: set[str] = set()
    for r in runs:
        key = json.dumps({**r.config.to_dict(), "seed": 0}, sort_keys=True)  # the seed changes no check
        if key not in checked:
            checked.add(key)
            try:  # the memory against the host's, the data; the GPU in a process of its own (below)
                check_run(r.config.replace(device="cpu"))
            except BadInput as exc:
                raise SweepError(f"{r.group}: {exc}") from None
            if r.config.device == "gpu" and "gpu" not in checked:
                checked.add("gpu")
                _check_gpu(r.group)
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
            msg = lines[-1] if lines else f"the run's check exited with status {rc}"
            msg = msg[len("error:"):].strip() if msg.startswith("error:") else msg
            raise SweepError(f"{r.group}: {msg}")


def _check_gpu(group: str) -> None:
    """``--device gpu`` needs a working GPU: asked of a short-lived process, so that the sweep itself never
    holds a GPU context (and its memory) while its runs train."""
    import subprocess
    import sys

    import bioplaus

    code = ("import sys\nfrom bioplaus.backend import BackendError, get_backend\ntry:\n    get_backend('gpu')\n"
            "except BackendError as exc:\n    print(exc)\n    sys.exit(2)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(bioplaus.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                              check=False)
    except subprocess.TimeoutExpired:
        raise SweepError(f"{group}: --device gpu: the GPU did not answer within 300 s") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
        raise SweepError(f"{group}: {lines[-1] if lines else 'no usable GPU'}")


# ---------------------------------------------------------------------- the state of each run's log
@dataclasses.dataclass
class Plan:
    """What the sweep does with one run: ``new``, ``resume``, ``extend``, ``done``, ``diverged`` or ``busy``."""

    spec: RunSpec
    action: str
    epochs_done: int = 0
    detail: str = ""


def lock_held(log_path: str) -> bool:
    """True when a live process holds ``<log>.lock`` (sims/run.py holds it while it writes the log). The
    lock is opened read-only, without following a link or blocking; anything but a regular file there
    counts as not held (:func:`check_files` refuses it before)."""
    try:
        return files.lock_held(files.lock_path(log_path))
    except (OSError, files.PathError):
        return False


def check_files(spec: RunSpec) -> None:
    """Every file of the run (:meth:`RunSpec.files`) is absent or a regular file (never a link, a FIFO, a
    device or a folder: the sweep opens them without following links or blocking, and refuses them here
    first, before anything is written); a lock beside the log is empty or bioplaus's."""
    try:
        for what, path in spec.files().items():
            files.refuse_unless_regular(path, what)
        files.check_lock_file(spec.path)
    except files.PathError as exc:
        raise SweepError(str(exc)) from None


def _config_difference(have: Config, want: Config, ignore: Sequence[str] = ()) -> str | None:
    """'lr 0.001 (this sweep: 0.0005)' for the first fields that differ, ignoring device, data_dir, epochs
    and ``ignore`` (and conv_algorithm where the sweep asks for "auto": the log holds what that resolved to)."""
    a, b = have.to_dict(), want.to_dict()
    if b.get("conv_algorithm") == "auto":  # a run records what "auto" resolved to on its device
        b["conv_algorithm"] = a["conv_algorithm"]
    diffs = [f"{k} {a[k]!r} (this sweep: {b[k]!r})" for k in a
             if k not in (*_NOT_IDENTITY, "epochs", *ignore) and a[k] != b.get(k)]
    return ", ".join(diffs[:3]) if diffs else None


def inspect(spec: RunSpec) -> Plan:
    """What to do with ``spec`` given what is on disk; raises SweepError when its log is not this run's."""
    from bioplaus.log import LogError, read_run

    ckpt = files.checkpoint_path(spec.path)
    if os.path.isdir(spec.path) and not os.path.islink(spec.path):
        raise SweepError(f"{spec.path} is a directory, where this sweep would write a run log")
    check_files(spec)
    if not os.path.lexists(spec.path):
        if os.path.lexists(ckpt):
            raise SweepError(f"{ckpt} exists without its log {spec.path}; move it away and run the sweep again")
        return Plan(spec, "new")
    try:
        run = read_run(spec.path)
    except LogError as exc:
        raise SweepError(f"{spec.path} is not a run log this sweep can use ({exc}); move it away") from exc
    # A schedule the sweep did not set is the recipe's, scaled to the run's epochs when the log was made:
    # a log keeps the one it ran with (one made before the scaling, or before --epochs grew, is the same run).
    diff = _config_difference(run.config, spec.config, ("lr_decay_milestones",) if spec.derived_schedule else ())
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
    kept = ""
    if tuple(run.config.milestones) != tuple(spec.config.milestones):
        kept = f"; keeps its logged schedule, decays after {' '.join(map(str, run.config.milestones)) or 'none'}"
    if run.status == "completed":
        if not os.path.lexists(ckpt) and done > 1:
            raise SweepError(f"{spec.path} is completed and its checkpoint is gone (--keep-checkpoint none?), so it "
                             f"cannot be extended to {want} epochs; use another --out-dir or the same --epochs")
        return Plan(spec, "extend", done, f"{done} -> {want} epochs{kept}")
    return Plan(spec, "resume", done, f"{run.status} after {done} epoch{'s' if done != 1 else ''}{kept}")


def epochs_in_log(path: str) -> int:
    """Completed epochs in a log (0 when it is missing or unreadable); cheap, for the progress line."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return int(f["epochs"]["epoch"].shape[0]) if "epoch" in f["epochs"] else 0
    except Exception:  # noqa: BLE001 -- a log being replaced, or not there yet: no progress to show
        return 0
