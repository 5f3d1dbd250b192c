"""TensorBoard event files from run logs (optional: ``pip install 'bioplaus[tensorboard]'``, tensorboardX,
which needs no torch).

The run log stays the product's output: the events are written from what the log holds, never from
the trainer, so a run with ``--tensorboard DIR`` trains and logs exactly as one without.

    bioplaus.tensorboard.export("runs/a.h5", "tb")     # an existing log -> tb/a/events.out.tfevents...
    python sims/run.py --variant pred --tensorboard tb  # the same, after every epoch of the run
    tensorboard --logdir tb

Each log gets its own folder ``DIR/<log name without .h5>``, so one ``--logdir`` compares runs. Every
series becomes a scalar tagged with its path in the log, ``epochs/test_error`` or
``layers/fc1/test_loss_pred``, at step = epoch, with the log's units and description as the summary's
description; entries the log leaves NaN (a series a rule lacks, the probe's angle between probe epochs)
are not written. An event's wall time is the log's creation time plus the training seconds summed up to
that epoch, so an export gives the same times as the run. Each exporter starts its events with a purge
from step 1 and writes the whole log, so a re-export or a resumed run replaces what an earlier one wrote.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import sys
from typing import Any

from bioplaus.log import Run, read_run

INSTALL_HINT = "pip install 'bioplaus[tensorboard]'"


class TensorBoardMissing(ImportError):
    """tensorboardX is not installed; ``str(e)`` says how to install it."""


def _summary_writer():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise TensorBoardMissing(f"TensorBoard export needs tensorboardX: {INSTALL_HINT}") from None
    return SummaryWriter


def check_available() -> None:
    """Raise :class:`TensorBoardMissing` unless tensorboardX can be imported."""
    _summary_writer()


def events_dir(log: str, out_dir: str) -> str:
    """Where the events of the run logged at ``log`` go: ``out_dir/<log name without .h5>``."""
    name = os.path.basename(os.fspath(log))
    return os.path.join(os.fspath(out_dir), name.removesuffix(".h5"))


def scalars(run: Run, first_epoch: int = 1) -> list[tuple[str, int, float, str]]:
    """``(tag, epoch, value, description)`` of every finite entry of every epoch and layer series of
    ``run`` from ``first_epoch`` on, in epoch order."""
    epochs = [int(e) for e in run.epochs.get("epoch", [])]
    series: list[tuple[str, Any]] = [(f"epochs/{name}", v) for name, v in run.epochs.items() if name != "epoch"]
    series += [(f"layers/{layer}/{name}", v) for layer, group in run.layers.items() for name, v in group.items()]
    out = []
    for i, epoch in enumerate(epochs):
        if epoch < first_epoch:
            continue
        for tag, values in series:
            value = float(values[i])
            if not math.isnan(value):
                units, description = run.info.get(tag, ("", ""))
                out.append((tag, epoch, value, f"{description} ({units})" if units else description))
    return out


def _wall_times(run: Run) -> dict[int, float | None]:
    """epoch -> the log's creation time plus the training seconds of epochs 1..epoch (None when unknown)."""
    try:
        start = _dt.datetime.fromisoformat(str(run.attrs.get("created", ""))).timestamp()
    except ValueError:
        return {}
    out, total = {}, 0.0
    for epoch, seconds in zip(run.epochs.get("epoch", []), run.epochs.get("seconds", [])):
        total += float(seconds) if math.isfinite(float(seconds)) else 0.0
        out[int(epoch)] = start + total
    return out


class Exporter:
    """Writes the events of one run log into ``events_dir(log, out_dir)``: :meth:`update` adds the epochs the
    log holds that are not written yet (the run loop calls it after each epoch: it is the ``on_epoch`` hook of
    :func:`bioplaus.runner.execute`). A failure to export warns once and stops the export, never the run."""

    def __init__(self, log: str, out_dir: str, strict: bool = False) -> None:
        self.log = os.fspath(log)
        self.folder = events_dir(self.log, out_dir)
        self.written = 0  # epochs written so far
        self.strict = strict  # raise a failure instead of warning (an export on its own)
        self._writer = None
        self._failed = False

    def update(self) -> int:
        """Write the epochs of the log that are new since the last call; returns how many epochs are written."""
        if self._failed:
            return self.written
        try:
            run = read_run(self.log)
            if self._writer is None:
                self._writer = _summary_writer()(logdir=self.folder, purge_step=1, flush_secs=3600)
                self._writer.add_text("config", "```json\n" + str(run.attrs.get("config", "")) + "\n```", 0)
            walls = _wall_times(run)
            for tag, epoch, value, description in scalars(run, self.written + 1):
                self._writer.add_scalar(tag, value, epoch, walltime=walls.get(epoch), summary_description=description)
            self._writer.flush()
            self.written = run.num_epochs
        except Exception as exc:  # an optional export must not stop a run
            if self.strict:
                raise
            self._failed = True
            print(f"warning: the TensorBoard export to {self.folder} stopped ({exc.__class__.__name__}: {exc}); "
                       f"the run goes on, and bioplaus.tensorboard.export({self.log!r}, ...) writes it later", file=sys.stderr, flush=True)
        return self.written

    def __call__(self, stats: dict | None = None, ev: dict | None = None) -> None:
        """The run loop's per-epoch hook: the epoch is in the log by now."""
        self.update()

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):  # closing an optional export must not fail a finished run
                self._writer.close()
            self._writer = None


def export(log: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """Write every epoch of the run logged at ``log`` as TensorBoard events under ``out_dir``; returns the
    events folder. Raises :class:`TensorBoardMissing` without tensorboardX and
    :class:`bioplaus.log.LogError` for a path that is not a run log."""
    check_available()
    read_run(os.fspath(log))  # a clear LogError before any folder is made
    exporter = Exporter(os.fspath(log), os.fspath(out_dir), strict=True)
    try:
        exporter.update()
    finally:
        exporter.close()
    return exporter.folder
