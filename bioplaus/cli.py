"""The command line of ``sims/run.py`` (and the ``bioplaus-run`` console script).

Configuration precedence: Config defaults < ``--recipe NAME`` < the flags the user typed (argparse
defaults are suppressed, so only typed flags are seen). Bad input of any kind gets one sentence on
stderr starting ``error: ``, exit status 2, and nothing is written: every check (flags, recipe,
configuration, model, dataset, device, output path, data files, resume consistency) runs before
the log is created.

A run writes ``<out>.h5`` (the log, see :mod:`bioplaus.log`) and ``<out>.h5.ckpt.npz`` (the latest
checkpoint, see :mod:`bioplaus.checkpoint`). At each epoch end the log epoch is written first, then
the checkpoint. Exit statuses: 0 done, 1 diverged, 2 bad input, 130 interrupted (SIGINT/SIGTERM;
the log is marked ``interrupted`` and ``--resume`` continues from the last completed epoch).

Test hook: when the environment variable ``BIOPLAUS_TEST_PAUSE_AFTER_LOG`` is set to ``SECONDS``
(or ``SECONDS@EPOCH``), the runner prints ``logged epoch <k>`` after each log write and sleeps that
long (after every epoch, or only after EPOCH) before the checkpoint write, so a test can kill it
between the two.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import bioplaus
from bioplaus.config import Config, ConfigError

try:  # POSIX: a lock beside the log keeps a second process from writing it
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Flags that may differ from the log's configuration on --resume.
RESUME_MAY_CHANGE = ("epochs", "device", "data_dir")


class UsageError(Exception):
    """Bad input; ``str(e)`` is the sentence shown after ``error: ``."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors -> our one-sentence form
        raise UsageError(message)


def _sentence(message: str) -> str:
    """One line, ending with a full stop (or a question mark)."""
    text = " ".join(str(message).split())
    return text if text.endswith((".", "?", "!")) else text + "."


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; config flags have no defaults, so only typed flags appear."""
    p = _Parser(
        prog="sims/run.py",
        description="Train a network with local (or backprop-free) learning rules and log every epoch to HDF5.",
        argument_default=argparse.SUPPRESS,
    )
    cfg = p.add_argument_group("run configuration (defaults < --recipe < these flags)")
    add = cfg.add_argument
    add("--variant", metavar="NAME", help="glob, pred, sim, predsim, pred-bpf, sim-bpf, predsim-bpf or glob+sim")
    add("--model", metavar="NAME", help="mlp, vgg8b, vgg11b, ... (default mlp)")
    add("--dataset", metavar="NAME", help="fashion-mnist-mini (embedded, default), mnist, fashion-mnist, kmnist, "
        "cifar10, cifar100, svhn, stl10")
    add("--epochs", type=int, metavar="N")
    add("--batch-size", dest="batch_size", type=int, metavar="N")
    add("--lr", type=float, metavar="LR", help="initial learning rate")
    add("--lr-decay-milestones", dest="lr_decay_milestones", type=int, nargs="+", metavar="EPOCH",
        help="epochs after which the learning rate is multiplied by --lr-decay-fact")
    add("--lr-decay-fact", dest="lr_decay_fact", type=float, metavar="F")
    add("--optim", metavar="NAME", help="adam, amsgrad or sgd")
    add("--momentum", type=float, metavar="M", help="SGD momentum")
    add("--weight-decay", dest="weight_decay", type=float, metavar="W")
    add("--dropout", type=float, metavar="P")
    add("--nonlin", metavar="NAME", help="relu or leakyrelu")
    add("--beta", type=float, metavar="B", help="weight of the sim loss in predsim variants")
    add("--num-layers", dest="num_layers", type=int, metavar="N", help="dense blocks (after the convs for vgg)")
    add("--num-hidden", dest="num_hidden", type=int, metavar="N", help="units per dense block")
    add("--feat-mult", dest="feat_mult", type=float, metavar="K", help="channel multiplier (vgg only)")
    add("--dim-in-decoder", dest="dim_in_decoder", type=int, metavar="N")
    add("--target-proj-size", dest="target_proj_size", type=int, metavar="N")
    add("--no-batch-norm", dest="batch_norm", action="store_const", const=False)
    add("--cutout", action="store_const", const=True)
    add("--cutout-length", dest="cutout_length", type=int, metavar="PX")
    add("--classes-per-batch", dest="classes_per_batch", type=int, metavar="N")
    add("--classes-per-batch-until-epoch", dest="classes_per_batch_until_epoch", type=int, metavar="EPOCH")
    add("--seed", type=int, metavar="S")
    add("--device", metavar="NAME", help="auto (default), cpu or gpu")
    add("--data-dir", dest="data_dir", metavar="DIR")
    add("--probe-every", dest="probe_every", type=int, metavar="K",
        help="every K epochs, log the angle to backprop and similarity matrices on a probe batch")

    run = p.add_argument_group("what to do")
    run.add_argument("--recipe", metavar="NAME", help="one of the paper's runs (see --list-recipes)")
    run.add_argument("--list-recipes", dest="list_recipes", action="store_true")
    run.add_argument("--out", metavar="PATH.h5", help="run log (default runs/<variant>-<model>-<dataset>-<time>.h5)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out log")
    run.add_argument("--resume", metavar="PATH.h5", help="continue an interrupted run from its last checkpoint")
    run.add_argument("--describe", action="store_true", help="print the model and its parameter count, then exit")
    run.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    return p


_ACTION_KEYS = {"recipe", "list_recipes", "out", "overwrite", "resume", "describe", "no_progress"}


def _config_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The configuration fields the user typed."""
    return {k: v for k, v in vars(ns).items() if k not in _ACTION_KEYS}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# ---------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            ns = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if getattr(ns, "list_recipes", False):
            return _list_recipes()
        if getattr(ns, "resume", None):
            prepared = _prepare_resume(ns)
        else:
            prepared = _prepare_new(ns)
        if prepared is None:  # --describe
            return EXIT_OK
    except UsageError as exc:
        print(f"error: {_sentence(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return _train(**prepared, progress=not getattr(ns, "no_progress", False))


def _list_recipes() -> int:
    from bioplaus.recipes import recipe_rows

    for row in recipe_rows():
        err = row.get("paper_test_error")
        paper = f"paper {err:.2f}%" if err is not None else "paper -"
        print(f"{row['name']:40s} {row['epochs']:4d} epochs  lr {row['lr']:.0e}  {paper}")
    return EXIT_OK


# ---------------------------------------------------------------------- checks (nothing written)
def _resolve(values: dict[str, Any], base: Config | None = None) -> Config:
    try:
        return Config.from_dict(values, base=base).resolve()
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def _check_model_and_data_spec(cfg: Config):
    from bioplaus.data import DataError, get_spec
    from bioplaus.models import MODELS

    if cfg.model not in MODELS:
        import difflib

        close = difflib.get_close_matches(cfg.model, MODELS, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; choose one of {', '.join(MODELS)}"
        raise UsageError(f"unknown model {cfg.model!r}{hint}")
    try:
        return get_spec(cfg.dataset)
    except (DataError, KeyError, ValueError) as exc:
        raise UsageError(_one(exc)) from exc


def _one(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"")
    return text or exc.__class__.__name__


def _backend(cfg: Config):
    from bioplaus.backend import BackendError, get_backend

    try:
        return get_backend(cfg.device)
    except BackendError as exc:
        raise UsageError(_one(exc)) from exc


def _load_data(cfg: Config):
    from bioplaus.data import DataError, load_dataset

    try:
        return load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    except DataError as exc:
        raise UsageError(_one(exc)) from exc


def _make_trainer(cfg: Config, backend, dataset):
    from bioplaus.train import Trainer

    try:
        return Trainer(cfg, backend, dataset)
    except ConfigError as exc:
        raise UsageError(_one(exc)) from exc


def _default_out(cfg: Config) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = os.path.join("runs", f"{cfg.variant}-{cfg.model}-{cfg.dataset}-{stamp}")
    path, k = stem + ".h5", 1
    while os.path.exists(path) or os.path.exists(path + ".ckpt.npz"):
        k += 1
        path = f"{stem}-{k}.h5"
    return path


def _check_writable(path: str) -> None:
    """The log's directory exists and is writable, or can be created under a writable one."""
    if os.path.isdir(path):
        raise UsageError(f"--out {path} is a directory; give a file name such as {os.path.join(path, 'run.h5')}")
    parent = os.path.dirname(os.path.abspath(path))
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"cannot write {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: {probe} is not writable")


def _prepare_new(ns: argparse.Namespace) -> dict[str, Any] | None:
    from bioplaus.recipes import get_recipe

    if getattr(ns, "overwrite", False) and not getattr(ns, "out", None):
        raise UsageError("--overwrite needs --out")
    base = None
    if getattr(ns, "recipe", None):
        try:
            base = Config.from_dict(get_recipe(ns.recipe))
        except ConfigError as exc:
            raise UsageError(str(exc)) from exc
    cfg = _resolve(_config_flags(ns), base)
    spec = _check_model_and_data_spec(cfg)
    if getattr(ns, "describe", False):
        from bioplaus.models import describe_model

        try:
            print(describe_model(cfg, tuple(spec.input_shape), spec.num_classes))
        except ConfigError as exc:
            raise UsageError(_one(exc)) from exc
        return None

    out = getattr(ns, "out", None) or _default_out(cfg)
    ckpt = out + ".ckpt.npz"
    _check_writable(out)
    if (os.path.exists(out) or os.path.exists(ckpt)) and not getattr(ns, "overwrite", False):
        raise UsageError(f"{out} already exists; pass --overwrite to replace it or --resume {out} to continue it")
    _check_not_running(out)
    backend = _backend(cfg)
    dataset = _load_data(cfg)
    trainer = _make_trainer(cfg, backend, dataset)
    return {"cfg": cfg, "backend": backend, "trainer": trainer, "out": out, "resume_from": None,
            "recipe": getattr(ns, "recipe", None), "overwrite": getattr(ns, "overwrite", False)}


def _prepare_resume(ns: argparse.Namespace) -> dict[str, Any]:
    from bioplaus.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
    from bioplaus.log import LogError, read_run

    path = ns.resume
    for key in ("recipe", "out", "overwrite", "describe"):
        if getattr(ns, key, None):
            raise UsageError(f"{_flag(key)} cannot be combined with --resume (the log holds the run's configuration)")
    try:
        run = read_run(path)
    except LogError as exc:
        raise UsageError(f"cannot resume: {_one(exc)}") from exc
    logged = run.config
    typed = _config_flags(ns)
    for key, value in typed.items():
        if key in RESUME_MAY_CHANGE:
            continue
        try:
            same = Config.from_dict({key: value}, base=logged).to_dict()[key] == logged.to_dict()[key]
        except ConfigError as exc:
            raise UsageError(str(exc)) from exc
        if not same:
            raise UsageError(f"{_flag(key)} differs from the configuration in {path}; only --epochs (larger), "
                             "--device, --data-dir and --no-progress may change on --resume")
    if typed.get("epochs", logged.epochs) < logged.epochs:
        raise UsageError(f"--epochs {typed['epochs']} is smaller than the {logged.epochs} epochs planned in {path}")
    cfg = _resolve({k: v for k, v in typed.items() if k in RESUME_MAY_CHANGE}, logged)

    done = run.num_epochs
    status = run.status
    if status == "diverged":
        raise UsageError(f"{path} diverged ({run.attrs.get('message', '')}); resuming it would diverge again")
    if status == "completed" and cfg.epochs <= done:
        raise UsageError(f"{path} is completed ({done} epochs); pass a larger --epochs to train on")

    ckpt = checkpoint_path(path)
    state, ckpt_epoch = None, 0
    if os.path.exists(ckpt):
        try:
            state, meta = load_checkpoint(ckpt)
        except CheckpointError as exc:
            raise UsageError(f"cannot resume: {_one(exc)}") from exc
        ckpt_epoch = int(meta.get("epoch", -1))
    if done not in (ckpt_epoch, ckpt_epoch + 1):
        raise UsageError(f"cannot resume: {path} holds {done} epochs but its checkpoint {ckpt} holds {ckpt_epoch}")
    _check_writable(path)
    if not os.access(path, os.W_OK):
        raise UsageError(f"cannot resume: {path} is not writable")
    _check_not_running(path)
    spec = _check_model_and_data_spec(cfg)
    del spec
    backend = _backend(cfg)
    dataset = _load_data(cfg)
    trainer = _make_trainer(cfg, backend, dataset)
    if state is not None:
        try:
            trainer.load_state_dict(state)
        except (KeyError, ValueError) as exc:
            raise UsageError(f"cannot resume: the checkpoint {ckpt} does not fit this model ({_one(exc)})") from exc
        if trainer.epoch != ckpt_epoch:
            raise UsageError(f"cannot resume: the checkpoint {ckpt} restored epoch {trainer.epoch}, not {ckpt_epoch}")
    return {"cfg": cfg, "backend": backend, "trainer": trainer, "out": path, "resume_from": (done, ckpt_epoch),
            "recipe": None, "overwrite": False}


def _check_not_running(out: str) -> None:
    """Refuse a log that a live process is still writing (its lock is held; a killed run's is not)."""
    lock = out + ".lock"
    if fcntl is None or not os.path.exists(lock):
        return
    with open(lock, "rb") as fh:  # opened read-only: checking writes nothing
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"{out} is being written by another running process; wait for it or stop it") from None


def _hold_lock(out: str):
    """Lock ``<out>.lock`` for this process's lifetime; the kernel drops it however the process ends."""
    if fcntl is None:
        return None
    fh = open(out + ".lock", "ab")  # noqa: SIM115 -- held open on purpose until the run ends
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UsageError(f"{out} is being written by another running process; wait for it or stop it") from None
    return fh


def _release_lock(out: str, fh) -> None:
    if fh is not None:
        with contextlib.suppress(OSError):
            os.unlink(out + ".lock")
        fh.close()


# ---------------------------------------------------------------------- training (writes)
class _Signals:
    """SIGINT/SIGTERM raise Interrupted, except inside ``deferred()`` where they wait for its end."""

    def __init__(self) -> None:
        self.critical = False
        self.pending: int | None = None
        self.saved: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.critical:
            self.pending = signum
        else:
            raise Interrupted(signum)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
        if self.pending is not None:
            raise Interrupted(self.pending)


def _summary(cfg: Config, trainer, backend, out: str, recipe: str | None) -> str:
    head = (f"bioplaus {bioplaus.__version__}: {cfg.variant} on {cfg.dataset}, model {cfg.model} "
            f"({trainer.num_parameters:,} parameters), {backend.device}")
    lines = [head]
    if recipe:
        lines.append(f"recipe: {recipe}")
    items = [f"{k}={v}" for k, v in cfg.to_dict().items() if k not in ("variant", "model", "dataset")]
    line = "config:"
    for item in items:
        if len(line) + len(item) > 100:
            lines.append(line)
            line = "       "
        line += " " + item
    lines.append(line)
    lines.append(f"log: {out}")
    return "\n".join(lines)


def _fmt_pct(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{v:.2f}%"


def _epoch_line(cfg: Config, stats: dict, ev: dict, layer_names: Sequence[str]) -> str:
    parts = [f"epoch {stats['epoch']}/{cfg.epochs}", f"train {_fmt_pct(stats.get('train_error'))}",
             f"test {_fmt_pct(ev.get('test_error'))}"]
    local = []
    for name in layer_names:
        if name == "out":
            continue
        entry = (ev.get("layers") or {}).get(name) or (stats.get("layers") or {}).get(name) or {}
        err = entry.get("error_pred")
        if err is not None and not math.isnan(float(err)):
            local.append(f"{name} {float(err):.1f}%")
    if local:
        parts.append("local: " + " ".join(local))
    parts.append(f"lr {float(stats['lr']):.1e}")
    parts.append(f"{float(stats['seconds']):.1f}s")
    return "  ".join(parts)


def _test_pause(epoch: int) -> None:
    """Test hook: BIOPLAUS_TEST_PAUSE_AFTER_LOG=SECONDS[@EPOCH] (every epoch, or only EPOCH)."""
    value = os.environ.get("BIOPLAUS_TEST_PAUSE_AFTER_LOG")
    if value:
        seconds, _, only = value.partition("@")
        print(f"logged epoch {epoch}", flush=True)
        if not only or int(only) == epoch:
            time.sleep(float(seconds))


def _train(cfg: Config, backend, trainer, out: str, resume_from, recipe, overwrite: bool, progress: bool) -> int:
    from bioplaus.checkpoint import checkpoint_path

    ckpt = checkpoint_path(out)
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
        lock = _hold_lock(out)  # before any write: two processes never write one log
    except UsageError as exc:
        print(f"error: {_sentence(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _train_locked(cfg, backend, trainer, out, ckpt, resume_from, recipe, overwrite, progress)
    finally:
        _release_lock(out, lock)


def _train_locked(cfg, backend, trainer, out, ckpt, resume_from, recipe, overwrite, progress) -> int:
    from bioplaus.checkpoint import save_checkpoint
    from bioplaus.log import RunLog
    from bioplaus.train import Diverged

    if resume_from is None:
        if overwrite:
            for stale in (out, ckpt):
                if os.path.exists(stale):
                    os.unlink(stale)
        log = RunLog.create(out, cfg, backend.device, trainer.num_parameters)
    else:
        done, ckpt_epoch = resume_from
        log = RunLog.open_for_resume(out)
        if done > ckpt_epoch:  # killed between the log write and the checkpoint write
            log.truncate(ckpt_epoch)
        log.set_config(cfg)
        log.set_device(backend.device)
        log.set_status("running")
    print(_summary(cfg, trainer, backend, out, recipe), flush=True)
    if resume_from is not None:
        print(f"resuming after epoch {trainer.epoch}", flush=True)

    resume_hint = f"resume with: python sims/run.py --resume {out}"
    signals = _Signals()
    signals.install()
    try:
        try:
            while trainer.epoch < cfg.epochs:
                epoch = trainer.epoch + 1
                stats = _train_epoch(trainer, cfg, epoch, progress)
                ev = trainer.evaluate()
                probe = trainer.probe() if cfg.probe_every and epoch % cfg.probe_every == 0 else None
                with signals.deferred():
                    log.append_epoch(stats, ev, probe)
                    _test_pause(epoch)
                    meta = {"epoch": trainer.epoch, "config": cfg.to_json(), "bioplaus_version": bioplaus.__version__}
                    save_checkpoint(ckpt, trainer.state_dict(), meta)
                print(_epoch_line(cfg, stats, ev, trainer.layer_names), flush=True)
            log.set_status("completed")
        except Interrupted as exc:
            log.set_status("interrupted", f"stopped by {exc} after epoch {trainer.epoch}")
            print(f"\ninterrupted by {exc} after epoch {trainer.epoch}; log: {out}\n{resume_hint}",
                  file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        except Diverged as exc:
            log.set_status("diverged", str(exc))
            print(f"diverged: {_sentence(str(exc))} log: {out}", file=sys.stderr, flush=True)
            return EXIT_DIVERGED
    finally:
        signals.restore()
    print(f"done: {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}; log: {out}")
    print(f"plot it: python sims/figures.py --logs {out} --out-dir figures  (or bioplaus.analysis.load_runs({out!r}) "
          f"and the notebooks in analysis/); browse it: h5ls -r {out}")
    return EXIT_OK


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
