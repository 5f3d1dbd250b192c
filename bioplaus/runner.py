"""The run loop: a training run from a configuration to a completed log, callable from Python.

    from bioplaus.runner import run, resume
    result = run(Config(variant="predsim-bpf", epochs=3), out="runs/a.h5")   # RunResult(path, status, ...)
    result = resume("runs/a.h5", epochs=5)

Every check runs before anything is written (:func:`prepare`, :func:`prepare_resume`): the
configuration and its combinations with the dataset, the memory the model needs, the device, the
data files, the output path (only a bioplaus run log may be replaced, and only with ``overwrite``),
and on resume that the checkpoint belongs to the log (same configuration, every array's name, shape
and dtype). Bad input raises :class:`BadInput` with one sentence and leaves every file as it was.

Then :func:`execute` takes the lock beside the log, writes the log and trains. At each epoch end the
log epoch is written first, then the checkpoint (both atomically). It ends with a status:

    completed     every planned epoch done                                          exit 0
    diverged      a loss became NaN or infinite (the log says where)                exit 1
    interrupted   SIGINT or SIGTERM; resume continues from the last completed epoch exit 130
    storage       the disk is full (or failing): the log keeps every completed epoch;
                  free space and resume                                              exit 74

Test hook: ``BIOPLAUS_TEST_PAUSE_AFTER_LOG=SECONDS`` (or ``SECONDS@EPOCH``) prints ``logged epoch <k>``
after each log write and sleeps that long (after every epoch, or only after EPOCH) before the
checkpoint write, so a test can act between the two. It, and ``BIOPLAUS_TEST_SIGTERM_AFTER``
(:mod:`bioplaus.parallel`), are checked with the flags: ``inf``, ``nan`` or a number too large is bad
input before anything is written, not a failure once the log exists.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bioplaus
from bioplaus import files, startup
from bioplaus import threads as threads_mod
from bioplaus.config import Config, ConfigError, logged_config, on_device
from bioplaus.errors import sentence
from bioplaus.limits import loads
from bioplaus.program import DEFAULT as DEFAULT_PROGRAM
from bioplaus.program import Program

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_STORAGE, EXIT_INTERRUPTED = 0, 1, 2, 74, 130
EXIT_CODES = {"completed": EXIT_OK, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED,
              "storage": EXIT_STORAGE}
RESUME_MAY_CHANGE = ("epochs", "device", "data_dir")  # flags that may differ from the log's on resume
KEEP_CHECKPOINT = ("all", "last", "none")  # which checkpoints a run keeps (--keep-checkpoint); "last" by default
PAUSE_HOOK = "BIOPLAUS_TEST_PAUSE_AFTER_LOG"
# Tests only (bioplaus.parallel): "KIND@N" sends rank 0 SIGTERM after its N-th command KIND has gone out.
SIGNAL_HOOK = "BIOPLAUS_TEST_SIGTERM_AFTER"


class BadInput(ValueError):
    """Bad input: ``str(e)`` is one sentence for the user; nothing was written."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. Not an Exception (as KeyboardInterrupt is not): raised wherever the signal
    lands, also inside library code that catches ``Exception`` to try a fallback, it must not be taken for
    an error there and dropped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class RunResult:
    """How a run ended: its log, status (completed, diverged, interrupted, storage) and epochs on disk."""

    path: str
    status: str
    epochs: int
    message: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


@dataclass
class Prepared:
    """A checked run, ready to execute: nothing has been written yet."""

    cfg: Config
    backend: Any
    trainer: Any
    out: str
    resume_from: tuple[int, int] | None = None  # (epochs in the log, epoch of the checkpoint)
    overwrite: bool = False
    recipe: str | None = None
    notes: list[str] = field(default_factory=list)
    device: str | None = None  # what the log records as the device (default: the backend's)
    schedule: str = ""  # where the learning-rate schedule came from, for the header
    threads: threads_mod.Threads | None = None  # the run's thread count (None: the process's pools as they are)
    keep_checkpoint: str = "last"
    program: Program = DEFAULT_PROGRAM  # how the user started it, for the hints the run prints


def _one(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"")
    return text or exc.__class__.__name__


# ------------------------------------------------------------------------------ checks (nothing written)
PAUSE_MAX_S = 3600.0  # the test hook's longest pause: a test acts within seconds


def check_environment() -> None:
    """Settings read from the environment that would otherwise fail mid-run (a sleep of ``inf``, a pause
    of 1e300 seconds, an epoch beyond any run): checked before anything is written."""
    value = os.environ.get(PAUSE_HOOK)
    if value:
        seconds, at, only = value.partition("@")
        try:
            pause = float(seconds)
            ok = 0 <= pause <= PAUSE_MAX_S and (not at or (only.isdigit() and 1 <= int(only) <= 2**31 - 1))
        except ValueError:
            ok = False
        if not ok:
            raise BadInput(f"{PAUSE_HOOK}={value[:40]!r} is not SECONDS or SECONDS@EPOCH (SECONDS from 0 to "
                           f"{PAUSE_MAX_S:g}, EPOCH from 1)")
    value = os.environ.get(SIGNAL_HOOK)
    if value:
        kind, _, nth = value.partition("@")
        if not (kind.isalpha() and nth.isdigit() and 1 <= int(nth) <= 2**31 - 1):
            raise BadInput(f"{SIGNAL_HOOK}={value[:40]!r} is not KIND@N (a command such as train, and N from 1)")


def resolve(values: dict[str, Any], base: Config | None = None) -> Config:
    try:
        return Config.from_dict(values, base=base).resolve()
    except ConfigError as exc:
        raise BadInput(_one(exc)) from exc


def new_config(flags: dict[str, Any], recipe: str | None = None, config_file: str | None = None,
               config_from: str | None = None):
    """The configuration of a new run (a :class:`bioplaus.settings.Layered`): the defaults, then ``recipe``
    (one of the paper's) or the configuration logged in ``config_from``, then the TOML file
    ``config_file``, then ``flags``. Raises :class:`BadInput`."""
    from bioplaus import settings

    try:
        file_recipe, file_values = settings.read_run_file(config_file) if config_file is not None else (None, {})
        logged = settings.read_logged_config(config_from) if config_from is not None else None
        return settings.layered(flags, file_values, recipe or file_recipe, logged, config_from, config_file)
    except ConfigError as exc:
        raise BadInput(_one(exc)) from None


def config_from(flags: dict[str, Any], recipe: str | None = None) -> Config:
    """The configuration of a new run: the defaults, then ``recipe`` (one of the paper's), then ``flags``."""
    return new_config(flags, recipe).config


def dataset_spec(cfg: Config):
    from bioplaus.data import DataError, get_spec

    try:
        return get_spec(cfg.dataset)
    except (DataError, KeyError, ValueError) as exc:
        raise BadInput(_one(exc)) from exc


def network_spec(cfg: Config, data_spec):
    from bioplaus.models import build_spec
    from bioplaus.rules import check_network, compose

    try:
        cfg.check_dataset(data_spec.num_classes, tuple(data_spec.input_shape), data_spec.num_train)
        spec = build_spec(cfg, tuple(data_spec.input_shape), data_spec.num_classes)
        check_network(spec, compose(cfg))  # a rule that cannot train the network (fa on a ResNet): before anything
        return spec
    except ConfigError as exc:
        raise BadInput(_one(exc)) from exc


def check_memory(cfg: Config, spec, data_spec, backend) -> None:
    from bioplaus.budget import available_bytes, estimate_bytes, human

    need = estimate_bytes(cfg, spec, data_spec.num_train or 60_000, on_gpu=backend.is_gpu)
    have, where = available_bytes(backend)
    if need > have:
        raise BadInput(f"this model needs about {human(need)} of memory (parameters, optimizer state and one "
                       f"batch's activations) but {where} {human(have)} available; make it smaller "
                       "(--feat-mult, --num-hidden, --num-layers, --batch-size)")


def get_device(cfg: Config, index: int | None = None):
    from bioplaus.backend import BackendError, get_backend

    try:
        return get_backend(cfg.device, index)
    except BackendError as exc:
        raise BadInput(_one(exc)) from exc


def find_data(cfg: Config) -> bool:
    """Every check of where the run's data comes from that writes nothing: True when it is on disk, False
    when it would be downloaded."""
    from bioplaus.data import DataError, check_data

    try:
        return check_data(cfg.dataset, data_dir=cfg.data_dir)
    except DataError as exc:
        raise BadInput(_one(exc)) from exc


def load_data(cfg: Config, progress: bool = False):
    """The run's dataset (downloaded if it must be, with a progress bar when ``progress``). A disk that
    fills during the download raises :class:`bioplaus.files.StorageFull` (exit 74), not bad input."""
    from bioplaus.data import DataError, load_dataset
    from bioplaus.data.fetch import DataStorageFull

    try:
        return load_dataset(cfg.dataset, data_dir=cfg.data_dir, progress=progress)
    except DataStorageFull as exc:
        raise files.StorageFull(errno.ENOSPC, _one(exc)) from None
    except DataError as exc:
        raise BadInput(_one(exc)) from exc


def check_run(cfg: Config, backend_index: int | None = None):
    """Every check of a run's configuration that writes nothing and reads no data file, in that order:
    the dataset and the network it makes, the device, the memory, where the data comes from. Returns
    ``(data_spec, net_spec, backend, data_on_disk)``. A sweep or a figures command runs it for every
    run it plans before it writes anything."""
    data_spec = dataset_spec(cfg)
    spec = network_spec(cfg, data_spec)
    backend = get_device(cfg, backend_index)
    check_memory(cfg, spec, data_spec, backend)
    return data_spec, spec, backend, find_data(cfg)


def probe_out(out: str, flag: str) -> None:
    """The last check before a run writes: the log's folder accepts new files (made and removed for real;
    it changes the folder's modification time, so every other check comes first)."""
    try:
        files.probe_folder(out, flag)
    except files.PathError as exc:
        raise BadInput(str(exc)) from None


def _load_then_probe(cfg: Config, out: str, flag: str, progress: bool, build):
    """Load the data (downloading it into the cache if it must: the data layer's own folder), build the
    trainer (``build(dataset)``), then probe the log's folder: the last check, as it is the only one that
    touches the folder (the data on disk may still be refused while reading it)."""
    trainer = build(load_data(cfg, progress))
    probe_out(out, flag)
    return trainer


def make_trainer(cfg: Config, backend, dataset, stages=None, factory=None):
    from bioplaus.train import Trainer

    try:
        if factory is not None:  # a layer-parallel run's trainer (bioplaus.parallel)
            return factory(cfg, backend, dataset)
        return Trainer(cfg, backend, dataset, stages=stages)
    except (ConfigError, ValueError) as exc:
        raise BadInput(_one(exc)) from exc


def default_out(cfg: Config) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = os.path.join("runs", f"{cfg.variant}-{cfg.model}-{cfg.dataset}-{stamp}")
    path, k = stem + ".h5", 1
    while any(os.path.lexists(p) for p in (path, files.checkpoint_path(path), files.lock_path(path))) or \
            files.epoch_checkpoints(path):
        k += 1
        path = f"{stem}-{k}.h5"
    return path


def check_new_out(out: str, overwrite: bool) -> None:
    """``out`` may receive a new run: a good name in a writable folder; if something is there, it is a
    bioplaus run log (and checkpoint) and ``overwrite`` was asked for."""
    from bioplaus.checkpoint import is_checkpoint
    from bioplaus.log import LogError, read_attrs

    try:
        files.check_name(out, "--out")
        if os.path.isdir(out) and not os.path.islink(out):
            raise files.PathError(f"--out {out} is a folder; give a file name such as {os.path.join(out, 'run.h5')}")
        files.check_folder_writable(out, "--out")
        ckpt = files.checkpoint_path(out)
        existing = [p for p in (out, ckpt) if os.path.lexists(p)]
        if existing and not overwrite:
            raise files.PathError(f"{out} already exists; pass --overwrite to replace it or --resume {out} to "
                                  "continue it" if os.path.lexists(out) else
                                  f"{ckpt} (a checkpoint) already exists; pass --overwrite to replace it")
        files.refuse_unless_regular(out, "a bioplaus run log")
        files.refuse_unless_regular(ckpt, "a bioplaus checkpoint")
        if os.path.lexists(out):
            try:
                read_attrs(out)
            except LogError:
                raise files.PathError(f"{out} is not a bioplaus run log; --overwrite replaces only run logs, so "
                                      "it is left alone") from None
            if not os.access(out, os.W_OK):
                raise files.PathError(f"cannot replace {out}: it is not writable")
        if os.path.lexists(ckpt) and not is_checkpoint(ckpt):
            raise files.PathError(f"{ckpt} is not a bioplaus checkpoint; --overwrite replaces only a run's own "
                                  "files, so it is left alone")
        for kept in files.epoch_checkpoints(out):  # --keep-checkpoint all's, of an earlier run at this path
            if not overwrite:
                raise files.PathError(f"{kept} (an epoch's checkpoint) already exists; pass --overwrite to replace "
                                      "the run there")
            files.refuse_unless_regular(kept, "a bioplaus checkpoint")
            if not is_checkpoint(kept):
                raise files.PathError(f"{kept} is not a bioplaus checkpoint; --overwrite replaces only a run's own "
                                      "files, so it is left alone")
        files.check_lock_file(out)
        files.check_not_running(out)
    except files.PathError as exc:
        raise BadInput(str(exc)) from None


def check_keep_checkpoint(keep: str) -> str:
    if keep not in KEEP_CHECKPOINT:
        raise BadInput(f"--keep-checkpoint takes all, last or none, not {keep!r}")
    return keep


def choose_threads(flag: int | None, processes: int = 1) -> threads_mod.Threads:
    try:
        return threads_mod.choose(flag, processes)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def prepare(cfg: Config | dict, out: str | None = None, overwrite: bool = False, recipe: str | None = None,
            stages=None, factory=None, backend_index: int | None = None, *, schedule: str = "",
            threads: int | None = None, processes: int = 1, keep_checkpoint: str = "last",
            program: Program = DEFAULT_PROGRAM, progress: bool = False) -> Prepared:
    """Check a new run completely; returns what :func:`execute` needs. Writes nothing (a download of
    missing data aside, into the cache). ``threads``: the run's thread count (None: see
    :mod:`bioplaus.threads`, with ``processes`` of this run on this host); ``progress``: a download's bar.
    The checks that need no file system come first, the folder probe last (:func:`probe_out`), so a
    refused run leaves even the folder's modification time as it was."""
    check_environment()
    if isinstance(cfg, dict):
        cfg = resolve(cfg)
    else:
        cfg = resolve({}, cfg)
    if overwrite and not out:
        raise BadInput("--overwrite needs --out")
    keep_checkpoint = check_keep_checkpoint(keep_checkpoint)
    chosen = choose_threads(threads, processes)
    data_spec = dataset_spec(cfg)
    network_spec(cfg, data_spec)
    out = out if out is not None else default_out(cfg)
    try:
        files.check_name(out, "--out")
    except files.PathError as exc:
        raise BadInput(str(exc)) from None
    _, _, backend, _ = check_run(cfg, backend_index)
    cfg = on_device(cfg, backend.is_gpu)  # "auto" resolved: what the log records and the trainer runs
    check_new_out(out, overwrite)
    if keep_checkpoint == "all":
        try:
            files.check_epoch_checkpoint_names(out, cfg.epochs)
        except files.PathError as exc:
            raise BadInput(str(exc)) from None
    trainer = _load_then_probe(cfg, out, "--out", progress,
                               lambda dataset: make_trainer(cfg, backend, dataset, stages, factory))
    return Prepared(cfg, backend, trainer, out, None, overwrite, recipe, schedule=schedule, threads=chosen,
                    keep_checkpoint=keep_checkpoint, program=program)


def prepare_resume(path: str, changes: dict[str, Any] | None = None, stages=None, factory=None,
                   backend_index: int | None = None, check_config: Callable[[Config], None] | None = None, *,
                   threads: int | None = None, processes: int = 1, keep_checkpoint: str | None = None,
                   program: Program = DEFAULT_PROGRAM, progress: bool = False) -> Prepared:
    """Check that the run logged at ``path`` can continue (with ``changes`` to --epochs, --device or
    --data-dir only); returns what :func:`execute` needs. Writes nothing (a download aside); the folder
    probe comes last. ``keep_checkpoint``: None keeps the log's own setting."""
    from bioplaus.checkpoint import CheckpointError, load_checkpoint, upgrade
    from bioplaus.log import LogError, check_recorded, read_run

    check_environment()
    changes = dict(changes or {})
    if keep_checkpoint is not None:
        check_keep_checkpoint(keep_checkpoint)
    chosen = choose_threads(threads, processes)
    try:
        if not path or not path.strip():
            raise files.PathError("--resume needs the path of a run log")
        if os.path.isdir(path):
            raise files.PathError(f"--resume {path} is a folder, not a run log")
        files.refuse_unless_regular(path, "a bioplaus run log")
        files.check_name(path, "--resume")
    except files.PathError as exc:
        raise BadInput(str(exc)) from None
    try:
        run = read_run(path)
        check_recorded(run)
    except LogError as exc:
        raise BadInput(f"cannot resume: {_one(exc)}") from exc
    logged = run.config
    for key, value in changes.items():
        if key in RESUME_MAY_CHANGE:
            continue
        try:
            same = Config.from_dict({key: value}, base=logged).to_dict()[key] == logged.to_dict()[key]
        except ConfigError as exc:
            raise BadInput(_one(exc)) from exc
        if not same:
            raise BadInput(f"--{key.replace('_', '-')} differs from the configuration in {path}; only --epochs "
                           "(larger), --device, --data-dir, --threads, --keep-checkpoint and --no-progress may change "
                           "on --resume")
    if changes.get("epochs", logged.epochs) < logged.epochs:
        raise BadInput(f"--epochs {changes['epochs']} is smaller than the {logged.epochs} epochs planned in {path}")
    cfg = resolve({k: v for k, v in changes.items() if k in RESUME_MAY_CHANGE}, logged)
    logged_keep = run.attrs.get("keep_checkpoint")
    keep = keep_checkpoint or (logged_keep if logged_keep in KEEP_CHECKPOINT else "last")

    done, status = run.num_epochs, run.status
    if status == "diverged":
        raise BadInput(f"{path} diverged ({run.attrs.get('message', '')}); resuming it would diverge again")
    if status == "completed" and cfg.epochs <= done:
        raise BadInput(f"{path} is completed ({done} epochs); pass a larger --epochs to train on")
    if check_config is not None:
        check_config(cfg)
    _, spec, backend, _ = check_run(cfg, backend_index)
    ckpt = files.checkpoint_path(path)
    state, meta, ckpt_epoch = None, None, 0
    try:
        files.refuse_unless_regular(ckpt, "a bioplaus checkpoint")
        files.check_folder_writable(path, "--resume")
        if not os.access(path, os.W_OK):
            raise files.PathError(f"cannot resume: {path} is not writable")
        files.check_lock_file(path)
        files.check_not_running(path)
    except files.PathError as exc:
        raise BadInput(str(exc)) from None
    if os.path.lexists(ckpt):
        try:
            state, meta = load_checkpoint(ckpt)
        except CheckpointError as exc:
            raise BadInput(f"cannot resume: {_one(exc)}") from exc
        ckpt_epoch = meta["epoch"]
        _check_checkpoint_config(meta, logged, ckpt, run.attrs.get("device"))
    if state is None and done > 1:
        why = " (it was removed when the run completed: --keep-checkpoint none)" if logged_keep == "none" else ""
        raise BadInput(f"cannot resume: {path} holds {done} epochs but its checkpoint {ckpt} is gone{why}; "
                       f"start a new run of its configuration with --config-from {path}")
    if done not in (ckpt_epoch, ckpt_epoch + 1):
        raise BadInput(f"cannot resume: {path} holds {done} epochs but its checkpoint {ckpt} holds {ckpt_epoch}")
    if keep == "all":
        try:
            files.check_epoch_checkpoint_names(path, cfg.epochs)
        except files.PathError as exc:
            raise BadInput(str(exc)) from None

    def build(dataset):
        trainer = make_trainer(cfg, backend, dataset, stages, factory)
        if state is not None:
            upgraded = upgrade(state, meta["checkpoint_format"], [b.name for b in spec.blocks])
            try:
                trainer.load_state_dict(upgraded)
            except (KeyError, ValueError) as exc:
                raise BadInput(f"cannot resume: the checkpoint {ckpt} does not belong to {path}: {_one(exc)}") from exc
            if trainer.epoch != ckpt_epoch:
                raise BadInput(f"cannot resume: the checkpoint {ckpt} holds epoch {trainer.epoch} in its arrays but "
                               f"says {ckpt_epoch}")
        return trainer

    trainer = _load_then_probe(cfg, path, "--resume", progress, build)
    return Prepared(cfg, backend, trainer, path, (done, ckpt_epoch), schedule="as logged", threads=chosen,
                    keep_checkpoint=keep, program=program)


def _check_checkpoint_config(meta: dict, logged: Config, ckpt: str, device: str | None = None) -> None:
    """The checkpoint was written by this log's run: its configuration matches (the settings a resume
    may change aside). ``device``: the log's, for a configuration written before runs recorded what
    "auto" resolved to (:func:`bioplaus.config.logged_config`)."""
    text = meta.get("config")
    try:
        raw = loads(text, "the configuration") if isinstance(text, str) else None
        theirs = logged_config(raw, device) if isinstance(raw, dict) else None
    except (ValueError, TypeError, ConfigError):  # ValueError: not JSON, too long or too deep (limits.loads)
        theirs = None
    if theirs is None:
        raise BadInput(f"cannot resume: the checkpoint {ckpt} has no readable configuration")
    a, b = theirs.to_dict(), logged.to_dict()
    for key in sorted(a):
        if key == "conv_algorithm" and raw.get(key, "auto") == "auto" and b[key] in ("im2col", "winograd"):
            continue  # an old "auto" was one of these, and the log may already say which (a resume began)
        if key not in RESUME_MAY_CHANGE and a[key] != b.get(key):
            raise BadInput(f"cannot resume: the checkpoint {ckpt} belongs to another run (its {key} is {a[key]!r}, "
                           f"the log's is {b.get(key)!r})")


# ------------------------------------------------------------------------------ signals
class Signals:
    """SIGINT/SIGTERM raise Interrupted, except inside ``deferred()`` (which nests) where they wait for
    its end. Installed only in the main thread (elsewhere Python cannot take signals); while installed,
    :func:`deferred_signals` reaches it (the layer-parallel trainer keeps each exchange between the
    ranks whole with it)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None
        self.saved: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.pending = signum  # kept even when raised: code that catches everything cannot make it be forgotten
        if not self.depth:
            raise Interrupted(signum)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handle)
        _INSTALLED.append(self)
        if startup.stopped() is not None:  # the command was signalled before, and something swallowed its Stop
            self.pending = startup.stopped()

    def restore(self) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
        self.saved.clear()
        if self in _INSTALLED:
            _INSTALLED.remove(self)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None:
            raise Interrupted(self.pending)


_INSTALLED: list[Signals] = []


def deferred_signals():
    """A context in which SIGINT/SIGTERM wait for its end, when a run's handlers are installed (else
    nothing: the default handlers apply)."""
    return _INSTALLED[-1].deferred() if _INSTALLED else contextlib.nullcontext()


def _test_pause(epoch: int, echo: Callable[[str], None]) -> None:
    value = os.environ.get(PAUSE_HOOK)
    if value:
        seconds, _, only = value.partition("@")
        echo(f"logged epoch {epoch}")
        if not only or int(only) == epoch:
            time.sleep(float(seconds))


# ------------------------------------------------------------------------------ the loop (writes)
def execute(prepared: Prepared, progress: bool = False, echo: Callable[[str], None] | None = None,
            on_epoch: Callable[[dict, dict], None] | None = None) -> RunResult:
    """Write the log and train (see the module docstring). Bad input met only now (the lock taken by
    another process in the meantime, a log that cannot be created) raises :class:`BadInput`, with
    whatever this call created removed again."""
    from bioplaus.backend import keep_freed_memory

    echo = echo or (lambda line: None)
    keep_freed_memory()  # every step reuses the last one's memory (no page faults for it)
    out = prepared.out
    folder = os.path.dirname(os.path.abspath(out))
    made: list[str] = []
    try:
        made = files.make_folders(folder)
        lock = files.RunLock(out).acquire()
    except (OSError, files.PathError) as exc:
        files.remove_folders(made)
        raise BadInput(str(exc) if isinstance(exc, files.PathError) else f"cannot write {out}: {exc.strerror}") \
            from None
    try:
        with threads_mod.limit(prepared.threads):
            return _execute_locked(prepared, progress, echo, on_epoch, lock, made)
    finally:
        lock.release()


def _open_log(prepared: Prepared, lock, made):
    from bioplaus.log import LogError, RunLog

    cfg, trainer, out = prepared.cfg, prepared.trainer, prepared.out
    if prepared.resume_from is None:
        try:
            if prepared.overwrite:
                files.remove_stale_temps(out)
                for ckpt in (files.checkpoint_path(out), *files.epoch_checkpoints(out)):
                    if files.regular_file(ckpt):  # the old run's checkpoints must not outlive its log
                        os.unlink(ckpt)
            log = RunLog.create(out, cfg, prepared.device or prepared.backend.device, trainer.num_parameters,
                                replace=prepared.overwrite, series=trainer.series)
            log.set_attrs(**_run_attrs(prepared))
            return log
        except (OSError, LogError) as exc:
            if files.is_storage_failure(exc):
                raise
            if lock.created:
                with contextlib.suppress(OSError):
                    os.unlink(lock.path)
            files.remove_folders(made)
            raise BadInput(f"cannot write {out}: {getattr(exc, 'strerror', None) or _one(exc)}") from None
    done, ckpt_epoch = prepared.resume_from
    files.remove_stale_temps(out)
    log = RunLog.open_for_resume(out, series=trainer.series)  # a format-1 log is converted
    if done > ckpt_epoch:  # killed between the log write and the checkpoint write
        log.truncate(ckpt_epoch)
    log.set_config(cfg)
    log.set_device(prepared.device or prepared.backend.device)
    log.set_attrs(**_run_attrs(prepared))
    log.set_status("running")
    return log


def _run_attrs(prepared: Prepared) -> dict[str, Any]:
    """How the run is made, beside its configuration: its threads and which checkpoints it keeps."""
    attrs: dict[str, Any] = {"keep_checkpoint": prepared.keep_checkpoint}
    if prepared.threads is not None:
        attrs["threads"] = int(prepared.threads.count)
    return attrs


def _execute_locked(prepared: Prepared, progress, echo, on_epoch, lock, made) -> RunResult:
    from bioplaus.checkpoint import save_checkpoint
    from bioplaus.train import Diverged

    cfg, trainer, out = prepared.cfg, prepared.trainer, prepared.out
    ckpt = files.checkpoint_path(out)
    log = None
    resume_hint = f"resume with: {prepared.program.run} --resume {out}"
    signals = Signals()
    signals.install()
    try:
        try:
            if signals.pending is not None:  # (see Signals.install): no log, no epoch
                raise Interrupted(signals.pending)
            with signals.deferred():  # a log made is a log marked: a signal meanwhile waits until it is open
                log = _open_log(prepared, lock, made)
            echo(summary(prepared))
            if prepared.resume_from is not None:
                echo(f"resuming after epoch {trainer.epoch}")
            while trainer.epoch < cfg.epochs:
                epoch = trainer.epoch + 1
                stats = _train_epoch(trainer, cfg, epoch, progress)
                ev = trainer.evaluate()
                probe = trainer.probe() if cfg.probe_every and epoch % cfg.probe_every == 0 else None
                with signals.deferred():
                    log.append_epoch(stats, ev, probe)
                    _test_pause(epoch, echo)
                    meta = {"epoch": trainer.epoch, "config": cfg.to_json(), "bioplaus_version": bioplaus.__version__}
                    save_checkpoint(ckpt, trainer.state_dict(), meta)
                    if prepared.keep_checkpoint == "all":
                        files.keep_epoch_checkpoint(ckpt, files.epoch_checkpoint_path(out, trainer.epoch))
                if on_epoch is not None:
                    on_epoch(stats, ev)
                echo(epoch_line(cfg, stats, ev, trainer.series))
            log.set_status("completed")
            if prepared.keep_checkpoint == "none":  # the log is complete: nothing is left to resume
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(ckpt)
        except Interrupted as exc:
            signals.depth += 1  # a second signal (mpiexec forwards Ctrl-C to every rank) waits: the run is ending
            message = f"stopped by {exc} after epoch {trainer.epoch}"
            if log is not None:
                _mark(log, "interrupted", message)
            else:
                _leave_nothing(lock, made)
            print(f"interrupted by {exc} after epoch {trainer.epoch}; log: {out}; {resume_hint}",
                  file=sys.stderr, flush=True)
            return RunResult(out, "interrupted", trainer.epoch, message)
        except Diverged as exc:
            marked = _mark(log, "diverged", str(exc))
            print(f"diverged: {sentence(str(exc))} log: {out}" + ("" if marked else " (its status could not be "
                  "updated: the disk is full)"), file=sys.stderr, flush=True)
            return RunResult(out, "diverged", exc.epoch - 1, str(exc))
        except OSError as exc:
            if not files.is_storage_failure(exc):
                raise
            if log is None:  # not even the log could be written: leave nothing behind
                _leave_nothing(lock, made)
            return _storage_failure(exc, log, trainer, out, resume_hint)
    finally:
        signals.restore()
    echo(f"done: {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}; log: {out}")
    echo(_kept(prepared))
    echo(f"plot it: {prepared.program.figures} --logs {out} --out-dir figures  (or "
         f"bioplaus.analysis.load_runs({out!r}) and the notebooks in analysis/); browse it: h5ls -r {out}")
    return RunResult(out, "completed", cfg.epochs)


def _leave_nothing(lock, made: list[str]) -> None:
    """A run that ends before its log exists removes what it made: its lock file and new folders."""
    if lock.created:
        with contextlib.suppress(OSError):
            os.unlink(lock.path)
        files.remove_folders(made)


def _kept(prepared: Prepared) -> str:
    out, keep = prepared.out, prepared.keep_checkpoint
    if keep == "none":
        return f"checkpoint: removed (--keep-checkpoint none); a new run of this configuration: --config-from {out}"
    if keep == "all":
        return (f"checkpoints: {files.checkpoint_path(out)} and one per epoch ({out}.epoch<k>.ckpt.npz); "
                f"train on: {prepared.program.run} --resume {out} --epochs N")
    return f"checkpoint: {files.checkpoint_path(out)}; train on: {prepared.program.run} --resume {out} --epochs N"


def _mark(log, status: str, message: str) -> bool:
    """Set the log's status (and why); where the disk has no room for a new copy of the log, rewrite its
    fixed-size status field in place (the message then stays as it was). False when neither worked."""
    try:
        log.set_status(status, message)
    except OSError:
        return log.set_status_in_place(status)
    return True


def _storage_failure(exc: OSError, log, trainer, out: str, resume_hint: str) -> RunResult:
    """A full (or failing) disk: the log keeps every completed epoch; say so, mark it where possible."""
    from bioplaus.log import read_run

    files.remove_stale_temps(out)
    try:
        on_disk = read_run(out).num_epochs if log is not None else 0
    except Exception:  # noqa: BLE001 -- the log itself may be unreadable now: say what we know
        on_disk = trainer.epoch
    reason = "no space left on the disk" if exc.errno in (28, 122) or isinstance(exc, files.StorageFull) else \
        f"the disk failed ({exc.strerror or exc})"
    folder = os.path.dirname(os.path.abspath(out))
    kept = f"the log keeps epochs 1..{on_disk}" if on_disk else "the log holds no epoch yet"
    message = f"{reason} in {folder} after epoch {trainer.epoch}; {kept}"
    marked = log is not None and _mark(log, "interrupted", message)
    files.remove_stale_temps(out)
    print(f"error: {message}{'' if marked else ' (its status could not be updated)'}; free space and {resume_hint}.",
          file=sys.stderr, flush=True)
    return RunResult(out, "storage", on_disk, message)


def _train_epoch(trainer, cfg: Config, epoch: int, progress: bool) -> dict:
    if not progress:
        return trainer.train_epoch()
    from tqdm import tqdm

    bar = tqdm(desc=f"epoch {epoch}/{cfg.epochs}", unit="sample", unit_scale=True, leave=False,
               dynamic_ncols=True, file=sys.stderr)

    def on_batch(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        return trainer.train_epoch(on_batch=on_batch)
    finally:
        bar.close()


# ------------------------------------------------------------------------------ what is printed
def summary(prepared: Prepared) -> str:
    cfg, trainer = prepared.cfg, prepared.trainer
    head = (f"bioplaus {bioplaus.__version__}: {cfg.variant} on {cfg.dataset}, model {cfg.model} "
            f"({trainer.num_parameters:,} parameters), {prepared.device or prepared.backend.device}")
    lines = [head]
    if prepared.recipe:
        lines.append(f"recipe: {prepared.recipe}")
    lines.append(f"lr schedule: {cfg.schedule_text()}" + (f" ({prepared.schedule})" if prepared.schedule else ""))
    if prepared.threads is not None:
        lines.append(f"threads: {prepared.threads.describe()}")
        warning = threads_mod.load_warning(prepared.threads)  # the one warning a run gives, in its header
        if warning:
            lines.append(warning)
    items = [f"{k}={v}" for k, v in cfg.to_dict().items() if k not in ("variant", "model", "dataset")]
    line = "config:"
    for item in items:
        if len(line) + len(item) > 100:
            lines.append(line)
            line = "       "
        line += " " + item
    lines.append(line)
    lines.extend(prepared.notes)
    lines.append(f"log: {prepared.out}")
    return "\n".join(lines)


def _fmt_pct(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{v:.2f}%"


def epoch_line(cfg: Config, stats: dict, ev: dict, series: dict) -> str:
    """The epoch's line; ``local:`` gives each layer's local predictor's test error (the first error a
    layer's probes declare, as ``series``, the run's probes by layer, says)."""
    from bioplaus.probes import ERROR

    parts = [f"epoch {stats['epoch']}/{cfg.epochs}", f"train {_fmt_pct(stats.get('train_error'))}",
             f"test {_fmt_pct(ev.get('test_error'))}"]
    local = []
    for name, probes in series.items():
        probe = next((p for p in probes if p.reduce == ERROR), None)
        entry = (ev.get("layers") or {}).get(name) or (stats.get("layers") or {}).get(name) or {}
        err = entry.get(probe.name) if probe is not None else None
        if err is not None and not math.isnan(float(err)):
            local.append(f"{name} {float(err):.1f}%")
    if local:
        parts.append("local: " + " ".join(local))
    parts.append(f"lr {float(stats['lr']):.1e}")
    parts.append(f"{float(stats['seconds']):.1f}s")
    return "  ".join(parts)


# ------------------------------------------------------------------------------ from Python
def run(cfg: Config | dict, out: str | None = None, *, overwrite: bool = False, progress: bool = False,
        verbose: bool = False, stages=None, threads: int | None = None, keep_checkpoint: str = "last") -> RunResult:
    """Train a run of ``cfg`` (a Config or a dict of its fields) to a log at ``out`` (a fresh
    ``runs/...h5`` by default). ``threads``: as ``--threads`` (None: see :mod:`bioplaus.threads`).
    Raises :class:`BadInput` on bad input; returns how the run ended."""
    echo = (lambda line: print(line, flush=True)) if verbose else None
    prepared = prepare(cfg, out, overwrite, stages=stages, threads=threads, keep_checkpoint=keep_checkpoint)
    return execute(prepared, progress=progress, echo=echo)


def resume(path: str, *, progress: bool = False, verbose: bool = False, stages=None, threads: int | None = None,
           keep_checkpoint: str | None = None, **changes) -> RunResult:
    """Continue the run logged at ``path`` (``epochs=``, ``device=``, ``data_dir=`` may change)."""
    echo = (lambda line: print(line, flush=True)) if verbose else None
    prepared = prepare_resume(path, changes, stages=stages, threads=threads, keep_checkpoint=keep_checkpoint)
    return execute(prepared, progress=progress, echo=echo)


# ---------------------------------------------------------------------- TensorBoard export (an optional extra)
def check_tensorboard(folder: str | None) -> None:
    """``--tensorboard DIR``: tensorboardX is there and DIR is (or can be made) a writable folder; raises
    BadInput before anything is written. Nothing to check without the flag (``folder`` None)."""
    if folder is None:
        return
    from bioplaus.tensorboard import TensorBoardMissing, check_available

    try:
        check_available()
        files.check_folder_writable(os.path.join(folder, "events"), "--tensorboard")
    except (TensorBoardMissing, files.PathError) as exc:
        raise BadInput(f"--tensorboard: {exc}") from None


@contextlib.contextmanager
def tensorboard_hook(folder: str | None, log: str):
    """The run loop's per-epoch hook that exports ``log`` to ``--tensorboard DIR`` (None without the flag)."""
    if folder is None:
        yield None
        return
    from bioplaus.tensorboard import Exporter

    exporter = Exporter(log, folder)
    try:
        yield exporter
    finally:
        exporter.close()
