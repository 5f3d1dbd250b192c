"""The HDF5 run log: one file per run, the product's main output (format_version 2).

Schema (every dataset carries ``units`` and ``description`` attributes)::

    /                          attrs: format_version (2), bioplaus_version, variant, model, dataset,
                                      seed, status (running | completed | diverged | interrupted),
                                      config (JSON of the resolved Config), device, created (ISO 8601),
                                      parameters (forward-network parameter count), epochs_planned,
                                      message (why the run stopped, empty when completed or running),
                                      threads (its BLAS threads per process), keep_checkpoint (all, last
                                      or none; both absent in logs of bioplaus before them)
    /epochs/<series>           (n_epochs,) one entry per completed epoch:
                                      epoch, train_loss, train_error, test_loss, test_error, lr, seconds
    /layers/<layer>/<series>   (n_epochs,) per block (or tap of a block, ``<block>.<tap>``) and the output
                                      layer ('out'): exactly the series the run's blocks, heads, carriers
                                      and probe declare (:mod:`bioplaus.probes`), named ``train_<name>`` and
                                      ``test_<name>`` for a statistic of every batch (losses, local errors),
                                      ``<name>`` for one measured at the epoch's end (weight_norm, fa_angle)
                                      or on the probe batch (bp_angle: NaN on epochs without a probe)
    /probe/epochs              (n_snapshots,) the epochs at which the probe batch was measured
    /probe/labels              (B,) labels of the fixed probe batch
    /probe/target_similarity   (B, B) the label similarity matrix S(Y) of the probe batch
    /probe/similarity/<layer>  (n_snapshots, B, B) S(h) of each block on the probe batch

The layers' series are created, empty, with the log (:meth:`RunLog.create` takes the run's declared
probes); each epoch appends a value to every one of them (NaN where a record lacks it). Format 1 (bioplaus
before declared probes) wrote the same series for every layer of every run, NaN where a rule has
no such quantity; it is read as it is, and a resumed format-1 log is converted (:meth:`RunLog.open_for_resume`):
the series the run declares stay, the all-NaN ones it does not are dropped, every number is kept.

The status is a fixed-length string (``STATUS_BYTES`` bytes, NUL-padded; h5py returns it as bytes:
``f.attrs["status"].decode()``, :func:`read_run` does it), so that it can be rewritten where it
stands when the disk is too full for anything else (:meth:`RunLog.set_status_in_place`): a run that
meets a full disk marks its log ``interrupted`` even with no room for a new copy of it.

Crash safety: the writer never modifies the log in place (but for that one status field). Each write reads the log into memory,
edits the in-memory copy with h5py, and writes it out as a new temporary file beside the log,
fsynced and atomically renamed over it (:func:`bioplaus.files.atomic_write`). A reader therefore
always sees a complete file holding every completed epoch, whether the writer is between epochs,
mid-write, or was killed; and since HDF5 itself never writes to the disk, a full disk is a clean
``OSError`` from a plain file write (HDF5 has been seen to crash on one), with the old log intact.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

import bioplaus
from bioplaus import limits
from bioplaus.config import Config, ConfigError, logged_config, on_device
from bioplaus.files import PathError, atomic_write, open_regular
from bioplaus.probes import SPLITS, Probe

FORMAT_VERSION = 2
STATUSES = ("running", "completed", "diverged", "interrupted")
STATUS_BYTES = 16  # the status attribute's fixed length: room for every status, rewritable in place

# name -> (units, description)
EPOCH_SERIES: dict[str, tuple[str, str]] = {
    "epoch": ("1", "1-based index of the completed epoch"),
    "train_loss": ("nats", "mean output-layer cross-entropy over the epoch's training batches"),
    "train_error": ("%", "output-layer classification error on the training batches (train mode)"),
    "test_loss": ("nats", "output-layer cross-entropy on the test set (eval mode)"),
    "test_error": ("%", "output-layer classification error on the test set (eval mode)"),
    "lr": ("1", "learning rate used during the epoch"),
    "seconds": ("s", "wall-clock seconds spent training the epoch"),
}
Series = Mapping[str, Iterable[Probe]]  # what a run records: layer -> its declared probes


def declared_series(series: Series) -> dict[str, dict[str, tuple[str, str]]]:
    """layer -> series name in the log -> (units, description), from the run's declared probes."""
    return {layer: {name: (probe.units, text) for probe in probes for name, text in probe.series().items()}
            for layer, probes in series.items()}


class LogError(RuntimeError):
    """A run log that is missing, unreadable, or not a bioplaus run log; one sentence."""


@dataclass
class Run:
    """A run log read back: plain NumPy arrays and dicts, no open file."""

    path: str
    attrs: dict[str, Any]
    config: Config
    epochs: dict[str, np.ndarray]
    layers: dict[str, dict[str, np.ndarray]]
    probe: dict[str, Any] = field(default_factory=dict)
    # the (units, description) attributes of each series, by its path in the log: "epochs/test_error",
    # "layers/fc1/weight_norm"; what analysis labels its axes with
    info: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def format_version(self) -> int:
        return int(self.attrs.get("format_version", 1))

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", ""))

    @property
    def num_epochs(self) -> int:
        return len(self.epochs.get("epoch", ()))


def _host(value: Any) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy array (or a Python number)."""
    if hasattr(value, "get") and not isinstance(value, (dict, np.ndarray)):
        value = value.get()
    return np.asarray(value)


def _num(value: Any) -> float:
    if value is None:
        return float("nan")
    return float(_host(value))


def _open_read(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r", locking=False)
    except TypeError:  # h5py without the locking argument
        return h5py.File(path, "r")


def _described(ds: h5py.Dataset, units: str, description: str) -> None:
    ds.attrs["units"] = units
    ds.attrs["description"] = description


def _append(group: h5py.Group, name: str, value: float | None, n_before: int, units: str = "",
            description: str = "") -> None:
    """Append one value to a 1-D resizable series (created, described, when missing), NaN-padding a series
    that starts late; ``value`` None only creates it, holding NaN for the ``n_before`` epochs before."""
    if name not in group:
        ds = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(256,))
        _described(ds, units, description)
    ds = group[name]
    old = ds.shape[0]
    ds.resize((n_before + (value is not None),))
    if old < n_before:
        ds[old:n_before] = np.nan
    if value is not None:
        ds[n_before] = value


def _value(sources: Mapping[str, Mapping], layer: str, name: str) -> Any:
    """The record's value of a layer's series: ``train_<x>``/``test_<x>`` from that pass's records, any
    other name from the training record (measured at the epoch's end) or the probe's."""
    split, _, key = name.partition("_")
    if split in SPLITS and key:
        return (sources[split].get(layer) or {}).get(key)
    value = (sources["train"].get(layer) or {}).get(name)
    return value if value is not None else (sources["probe"].get(layer) or {}).get(name)


def _check_declared(layers: h5py.Group, sources: Mapping[str, Mapping]) -> None:
    """Every value a record holds has its series in the log (declared when the log was created)."""
    for source, records in sources.items():
        for layer, values in records.items():
            have = set(layers[layer]) if layer in layers else set()
            for key in values or {}:
                if key not in have and f"{source}_{key}" not in have:
                    raise ValueError(f"the {source} record holds {layer}/{key}, a series the run did not declare")


class RunLog:
    """Writer of one run log. Every method opens, writes, closes and atomically replaces the file."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)

    # ------------------------------------------------------------------ creating
    @classmethod
    def create(cls, path: str, cfg: Config, device: str, parameters: int, replace: bool = False,
               series: Series | None = None) -> RunLog:
        """A new log at ``path``, status ``running``, no epochs yet, with an empty series for every probe
        the run declares (``series``: layer -> probes; the trainer's ``series``). ``path`` must not exist
        unless ``replace`` (the caller checked that it is a run log that may go). ``cfg`` is recorded as it
        runs on ``device`` ("auto" for --conv-algorithm resolved: :func:`bioplaus.config.on_device`)."""
        path = os.fspath(path)
        if os.path.lexists(path) and not replace:
            raise LogError(f"{path} already exists")
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            a = f.attrs
            a["format_version"] = FORMAT_VERSION
            a["bioplaus_version"] = bioplaus.__version__
            a["variant"] = cfg.variant
            a["model"] = cfg.model
            a["dataset"] = cfg.dataset
            a["seed"] = cfg.seed
            _set_status_attr(f, "running")
            a["config"] = on_device(cfg, str(device).startswith("gpu")).to_json()  # "auto" resolved (config)
            a["device"] = device
            a["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            a["parameters"] = int(parameters)
            a["epochs_planned"] = int(cfg.epochs)
            a["message"] = ""
            f.create_group("epochs")
            layers = f.create_group("layers")
            f.create_group("probe")
            for layer, names in declared_series(series or {}).items():
                lg = layers.require_group(layer)
                for name, (units, description) in names.items():
                    _append(lg, name, None, 0, units, description)
        _write_image(path, buf)
        return cls(path)

    @classmethod
    def open_for_resume(cls, path: str, series: Series | None = None) -> RunLog:
        """A writer for an existing log; raises LogError if it is missing or not a run log. A log of format
        1 is converted to this format when the run's ``series`` are given: the declared series stay (with
        their declared units and descriptions), the all-NaN series the run does not declare go."""
        attrs = read_attrs(path)  # validates
        log = cls(path)
        if attrs["format_version"] < FORMAT_VERSION and series is not None:
            with log._edit() as f:
                _convert(f, declared_series(series))
        return log

    # ------------------------------------------------------------------ writing
    def _edit(self):
        return _Edit(self.path)

    def append_epoch(self, stats: Mapping[str, Any], ev: Mapping[str, Any], probe: Mapping[str, Any] | None = None) -> int:
        """Append one completed epoch (train stats, evaluation, optional probe); returns epochs on disk."""
        with self._edit() as f:
            eg = f["epochs"]
            n = eg["epoch"].shape[0] if "epoch" in eg else 0
            row = {
                "epoch": stats["epoch"],
                "train_loss": stats.get("train_loss"),
                "train_error": stats.get("train_error"),
                "test_loss": ev.get("test_loss"),
                "test_error": ev.get("test_error"),
                "lr": stats.get("lr"),
                "seconds": stats.get("seconds"),
            }
            for name, (units, desc) in EPOCH_SERIES.items():
                _append(eg, name, _num(row[name]), n, units, desc)

            sources = {
                "train": stats.get("layers") or {},
                "test": ev.get("layers") or {},
                "probe": (probe or {}).get("layers") or {},
            }
            _check_declared(f["layers"], sources)
            for layer, lg in f["layers"].items():
                for name in _series(lg):
                    _append(lg, name, _num(_value(sources, layer, name)), n)

            if probe is not None and probe.get("similarity"):
                self._append_probe(f["probe"], int(stats["epoch"]), probe)
            return n + 1

    @staticmethod
    def _append_probe(pg: h5py.Group, epoch: int, probe: Mapping[str, Any]) -> None:
        if "labels" not in pg and probe.get("labels") is not None:
            ds = pg.create_dataset("labels", data=_host(probe["labels"]).astype(np.int64))
            _described(ds, "1", "class labels of the fixed probe batch")
        if "target_similarity" not in pg and probe.get("target_similarity") is not None:
            ds = pg.create_dataset("target_similarity", data=_host(probe["target_similarity"]).astype(np.float32))
            _described(ds, "1", "label similarity matrix S(Y) of the probe batch (cosine, in [-1, 1])")
        n = pg["epochs"].shape[0] if "epochs" in pg else 0
        _append(pg, "epochs", epoch, n, "1", "epochs at which the probe batch was measured")
        sg = pg.require_group("similarity")
        for layer, S in probe["similarity"].items():
            S = _host(S).astype(np.float32)  # (B, B)
            if layer not in sg:
                ds = sg.create_dataset(
                    layer, shape=(0, *S.shape), maxshape=(None, *S.shape), dtype="f4", chunks=(1, *S.shape)
                )
                _described(ds, "1", f"similarity matrix S(h) of {layer} on the probe batch, one per snapshot")
            ds = sg[layer]
            old = ds.shape[0]
            ds.resize((n + 1, *S.shape))
            if old < n:
                ds[old:n] = np.nan
            ds[n] = S

    def set_status(self, status: str, message: str = "") -> None:
        """Mark the run running / completed / diverged / interrupted, with why it stopped."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        with self._edit() as f:
            _set_status_attr(f, status)
            f.attrs["message"] = message

    def set_status_in_place(self, status: str) -> bool:
        """Rewrite only the status, its fixed bytes where they stand in the file: for a full disk, where
        :meth:`set_status` has no room for a new copy of the log. The message is not changed. Returns
        False (the log untouched) when the place cannot be found for sure (a log of an older bioplaus,
        whose status has no fixed length) or the write fails."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        try:
            fd = open_regular(self.path, os.O_RDWR, "a bioplaus run log")
        except (OSError, PathError):
            return False
        try:
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read()
            where = _status_offset(data, status)
            if where is None:
                return False
            os.pwrite(fd, _status_field(status), where)
            os.fsync(fd)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    def set_config(self, cfg: Config) -> None:
        """Record a resumed run's configuration (only the planned epochs may have grown)."""
        with self._edit() as f:
            f.attrs["config"] = cfg.to_json()
            f.attrs["epochs_planned"] = int(cfg.epochs)

    def set_device(self, device: str) -> None:
        with self._edit() as f:
            f.attrs["device"] = device

    def set_attrs(self, **values) -> None:
        """Record how the run is made beside its configuration (``threads``, ``keep_checkpoint``)."""
        with self._edit() as f:
            for key, value in values.items():
                f.attrs[key] = value

    def truncate(self, n_epochs: int) -> None:
        """Keep only the first ``n_epochs`` epochs (and probe snapshots of those epochs)."""
        with self._edit() as f:
            for group in (f["epochs"], *f["layers"].values()):
                for name in _series(group):
                    if group[name].shape[0] > n_epochs:
                        group[name].resize((n_epochs,))
            pg = f["probe"]
            if "epochs" in pg:
                keep = int(np.sum(pg["epochs"][()] <= n_epochs))
                pg["epochs"].resize((keep,))
                for ds in pg.get("similarity", {}).values():
                    ds.resize((keep, *ds.shape[1:]))

    def num_epochs(self) -> int:
        with _open_read(self.path) as f:
            return int(f["epochs"]["epoch"].shape[0]) if "epoch" in f["epochs"] else 0


def _series(group: h5py.Group) -> Iterable[str]:
    return [k for k, v in group.items() if isinstance(v, h5py.Dataset)]


def _convert(f: h5py.File, declared: dict[str, dict[str, tuple[str, str]]]) -> None:
    """A format-1 log in memory -> this format: each layer keeps the series the run declares (described
    as declared; one it lacks is added, NaN), and loses those it does not declare that hold only NaN."""
    n = f["epochs"]["epoch"].shape[0] if "epoch" in f["epochs"] else 0
    for layer in list(f["layers"]):
        lg, names = f["layers"][layer], declared.get(layer, {})
        for name in _series(lg):
            if name in names:
                _described(lg[name], *names[name])
            elif np.all(np.isnan(lg[name][()])):
                del lg[name]
        if not len(lg):
            del f["layers"][layer]
    for layer, names in declared.items():
        lg = f["layers"].require_group(layer)
        for name, (units, description) in names.items():
            if name not in lg:
                _append(lg, name, None, n, units, description)
    f.attrs["format_version"] = FORMAT_VERSION
    status = _attr(f.attrs.get("status", ""))
    if status in STATUSES:  # a format-1 status has no fixed length: given one, a full disk can rewrite it in place
        _set_status_attr(f, status)


def _write_image(path: str, buf: io.BytesIO) -> None:
    """Write an in-memory HDF5 file over ``path`` atomically (checking the free space first)."""
    data = buf.getbuffer()
    atomic_write(path, lambda fh: fh.write(data), needed=len(data))


def _status_field(status: str) -> bytes:
    return status.encode("ascii").ljust(STATUS_BYTES, b"\0")


def _set_status_attr(f: h5py.File, status: str) -> None:
    f.attrs.create("status", np.array(status.encode("ascii"), dtype=f"S{STATUS_BYTES}"))


def _status_offset(data: bytes, status: str) -> int | None:
    """Where, in the log image ``data``, the bytes of the status field lie: the one place whose
    replacement by ``status`` gives a log that reads back with that status and every other root
    attribute unchanged. None when there is not exactly one such place."""

    def attrs_of(image: bytes) -> dict[str, Any] | None:
        try:
            with h5py.File(io.BytesIO(image), "r") as f:
                return {k: _attr(v) for k, v in f.attrs.items()}
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            return None

    before = attrs_of(data)
    if before is None or before.get("status") not in STATUSES:
        return None
    old = _status_field(before["status"])
    found = []
    at = data.find(old)
    while at >= 0 and len(found) < 2:
        candidate = data[:at] + _status_field(status) + data[at + STATUS_BYTES:]
        if attrs_of(candidate) == {**before, "status": status}:
            found.append(at)
        at = data.find(old, at + 1)
    return found[0] if len(found) == 1 else None


class _Edit:
    """Context manager: the log read into memory and opened there for writing; on a clean exit the
    edited image is written over the log atomically; on an error the log is left as it was."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> h5py.File:
        with os.fdopen(open_regular(self.path, os.O_RDONLY, "a bioplaus run log"), "rb") as fh:
            self.buf = io.BytesIO(fh.read())
        self.file = h5py.File(self.buf, "r+")
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        if exc_type is None:
            _write_image(self.path, self.buf)


# ---------------------------------------------------------------------- reading
def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(path: str) -> dict[str, Any]:
    """The root attributes of a run log; raises LogError if it is missing or not a run log."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LogError(f"no run log at {path}")
    try:
        with _open_read(path) as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            groups_ok = all(g in f for g in ("epochs", "layers", "probe"))
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise LogError(f"{path} is not a readable HDF5 file ({exc.__class__.__name__})") from exc
    if "format_version" not in attrs or "config" not in attrs or not groups_ok:
        raise LogError(f"{path} is not a bioplaus run log")
    version = attrs["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(attrs["config"], str):
        raise LogError(f"{path} is damaged: its format_version or config attribute has the wrong type")
    if version > FORMAT_VERSION:
        raise LogError(f"{path} has log format {version}, newer than this bioplaus reads")
    if version < 1:
        raise LogError(f"{path} is damaged: its format_version is {version}")
    return attrs


PROBE_KEYS = ("epochs", "labels", "target_similarity", "similarity")


def read_run(path: str) -> Run:
    """Read a whole run log into memory (safe while a writer is between or even inside epochs).

    A log that is truncated, altered or not ours raises :class:`LogError` with one sentence. Every
    dataset's kind, shape and size is checked before any is read (:func:`_survey`), so a log that
    declares more data than it can hold is refused before memory is spent on it.
    """
    path = os.fspath(path)
    attrs = read_attrs(path)
    try:
        with _open_read(path) as f:
            limits.check_declared(_survey(f, path), path)
            epochs = {k: np.asarray(v[()]) for k, v in f["epochs"].items()}
            layers = {name: {k: np.asarray(v[()]) for k, v in g.items()} for name, g in f["layers"].items()}
            pg = f["probe"]
            probe: dict[str, Any] = {k: np.asarray(pg[k][()]) for k in PROBE_KEYS[:3] if k in pg}
            if "similarity" in pg:
                probe["similarity"] = {k: np.asarray(v[()]) for k, v in pg["similarity"].items()}
            info = {ds.name[1:]: (_text(ds.attrs.get("units", "")), _text(ds.attrs.get("description", "")))
                    for group in (f["epochs"], *f["layers"].values()) for ds in group.values()}
    except LogError:
        raise
    except limits.TooLarge as exc:
        raise LogError(f"{path} is damaged: it {str(exc).removeprefix(path + ' ')}") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise LogError(f"{path} is damaged ({exc.__class__.__name__} while reading it)") from exc
    try:
        config = logged_config(limits.loads(attrs["config"], "its config attribute"), attrs.get("device"))
        config.validate()
    except (ValueError, TypeError, ConfigError) as exc:
        raise LogError(f"{path} holds a configuration this bioplaus cannot read ({_first_line(exc)})") from exc
    run = Run(path=path, attrs=attrs, config=config, epochs=epochs, layers=layers, probe=probe, info=info)
    _check_consistent(run)
    return run


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0].rstrip(".")


def _text(value: Any) -> str:
    value = _attr(value)
    return value if isinstance(value, str) else str(value)


def _survey(f: h5py.File, path: str) -> int:
    """Check what a log declares, before anything is read: every series a 1-D dataset of numbers, all of
    one length (the epochs), and a probe group whole (its epochs, labels, target and one (S, B, B) stack
    per block, or none of them). Returns the bytes reading it will take."""
    def series(ds, n: int | None) -> int:
        if not isinstance(ds, h5py.Dataset):
            raise LogError(f"{path} is damaged: {ds.name} should be a series of numbers, but it is a group")
        if len(ds.shape) != 1 or ds.dtype.kind not in "fiu":
            raise LogError(f"{path} is damaged: {ds.name} should be a 1-D series of numbers")
        if n is not None and ds.shape[0] != n:
            raise LogError(f"{path} is damaged: its series do not all hold {n} epochs")
        return ds.shape[0] * ds.dtype.itemsize

    eg = f["epochs"]
    epoch = eg.get("epoch")
    n = epoch.shape[0] if isinstance(epoch, h5py.Dataset) and len(epoch.shape) == 1 else 0
    total = sum(series(ds, n) for ds in eg.values())
    for lg in f["layers"].values():
        if not isinstance(lg, h5py.Group):
            raise LogError(f"{path} is damaged: {lg.name} should be a group of series")
        total += sum(series(ds, n) for ds in lg.values())
    pg = f["probe"]
    here = [k for k in PROBE_KEYS if k in pg]
    if not here:
        return total
    if len(here) < len(PROBE_KEYS):
        missing = [k for k in PROBE_KEYS if k not in pg]
        raise LogError(f"{path} is damaged: its probe group has {', '.join(here)} but not {', '.join(missing)}")
    snaps, labels, target, sim = (pg[k] for k in PROBE_KEYS)
    if not all(isinstance(d, h5py.Dataset) for d in (snaps, labels, target)) or not isinstance(sim, h5py.Group):
        raise LogError(f"{path} is damaged: its probe group holds a group where a dataset belongs, or the reverse")
    total += series(snaps, None)
    s, b = snaps.shape[0], labels.shape[0] if len(labels.shape) == 1 else -1
    shapes = [(labels, (b,)), (target, (b, b))] + [(ds, (s, b, b)) for ds in sim.values()]
    for ds, want in shapes:
        if not isinstance(ds, h5py.Dataset) or ds.shape != want or ds.dtype.kind not in "fiu" or b < 0:
            raise LogError(f"{path} is damaged: {ds.name} does not fit its probe group (expected shape {want})")
        total += ds.size * ds.dtype.itemsize
    if s > n:
        raise LogError(f"{path} is damaged: its probe holds {s} snapshots of {n} epochs")
    return total


def _check_consistent(run: Run) -> None:
    """Series of equal length n, epochs numbered 1..n, a known status: else the log was altered."""
    where = run.path
    if run.status not in STATUSES:
        raise LogError(f"{where} has an unknown status {run.status!r}")
    n = run.num_epochs
    lengths = {len(v) for v in run.epochs.values()} | {len(v) for s in run.layers.values() for v in s.values()}
    if lengths - {n}:
        raise LogError(f"{where} is damaged: its series do not all hold {n} epochs")
    missing = [name for name in EPOCH_SERIES if name not in run.epochs]
    if n and missing:
        raise LogError(f"{where} is damaged: it has no {missing[0]} series")
    if n and not np.array_equal(run.epochs["epoch"], np.arange(1, n + 1)):
        raise LogError(f"{where} is damaged: its epochs are not numbered 1 to {n}")
    planned = run.attrs.get("epochs_planned")
    if not isinstance(planned, int) or planned < 1 or not math.isfinite(planned):
        raise LogError(f"{where} is damaged: epochs_planned is {planned!r}")
    snaps = run.probe.get("epochs")
    if snaps is not None and snaps.size and (np.any(np.diff(snaps) <= 0) or snaps[0] < 1 or snaps[-1] > n):
        raise LogError(f"{where} is damaged: its probe epochs are not increasing epochs between 1 and {n}")


def check_recorded(run: Run) -> None:
    """The numbers a run carries on from are those it logged: every per-epoch value finite, learning rates
    positive, errors between 0 and 100 %, losses and seconds not negative (a log edited to hold NaN in
    ``lr``, say, would otherwise be resumed and "completed"). Raises LogError naming the first bad one."""
    bounds = {"%": (0.0, 100.0), "nats": (0.0, math.inf), "s": (0.0, math.inf)}
    for name, (units, _) in EPOCH_SERIES.items():
        values = np.asarray(run.epochs.get(name, ()), dtype=float)
        low, high = bounds.get(units, (-math.inf, math.inf))
        bad = ~np.isfinite(values) | (values < low) | (values > high) | ((values <= 0) if name == "lr" else False)
        if bad.any():
            e = int(np.argmax(bad))
            raise LogError(f"{run.path} is damaged: its {name} of epoch {e + 1} is {float(values[e])}")


def read_runs(paths: Iterable[str]) -> list[Run]:
    """:func:`read_run` for each path, in order."""
    return [read_run(p) for p in paths]
