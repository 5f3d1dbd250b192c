"""Checkpoints: the trainer's whole state at an epoch boundary, beside the run log.

A checkpoint is one ``.npz`` file (``<log>.ckpt.npz``) holding every array of
``Trainer.state_dict()`` (parameters, fixed matrices B and P, optimizer states, BN running
statistics, the epoch) plus a JSON ``meta`` record (epoch, configuration, format). It is written
atomically: to ``<path>.tmp`` first, fsynced, then renamed over the old one, so a kill leaves
either the previous checkpoint or the new one, never half of one.

Order at the end of each epoch: the log epoch is written first, then the checkpoint. A kill
between the two leaves the log one epoch ahead; resuming truncates the log to the checkpoint's
epoch and recomputes that epoch (randomness is keyed by (seed, epoch), so the result is the same).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

CHECKPOINT_FORMAT = 1
_META_KEY = "__bioplaus_meta__"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or unreadable; one sentence."""


def checkpoint_path(log_path: str) -> str:
    """Where the checkpoint of the run logged at ``log_path`` lives."""
    return os.fspath(log_path) + ".ckpt.npz"


def _host(value: Any) -> np.ndarray:
    if hasattr(value, "get") and not isinstance(value, np.ndarray):
        value = value.get()  # CuPy -> NumPy
    return np.asarray(value)


def save_checkpoint(path: str, state_dict: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write ``state_dict`` (name -> array) and ``meta`` (JSON-able) to ``path`` atomically."""
    path = os.fspath(path)
    if _META_KEY in state_dict:
        raise ValueError(f"{_META_KEY!r} is reserved in a checkpoint")
    arrays = {name: _host(v) for name, v in state_dict.items()}
    record = dict(meta, checkpoint_format=CHECKPOINT_FORMAT)
    arrays[_META_KEY] = np.array(json.dumps(record, sort_keys=True))
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(state_dict, meta)`` from a checkpoint; raises CheckpointError if missing or damaged."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"the checkpoint {path} is damaged ({exc.__class__.__name__})") from exc
    if _META_KEY not in arrays:
        raise CheckpointError(f"{path} is not a bioplaus checkpoint")
    meta = json.loads(str(arrays.pop(_META_KEY)))
    return arrays, meta
