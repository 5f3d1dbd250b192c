"""Checkpoints: the trainer's whole state at an epoch boundary, beside the run log.

A checkpoint is one ``.npz`` file (``<log>.ckpt.npz``) holding every array of the trainer's state
dict plus a JSON ``meta`` record (epoch, configuration, format). Format 2 keys every array by the
block that owns it, so a checkpoint loads into any split of the network into stages::

    epoch                               completed epochs
    blocks/<block>/params/<name>        W, b, gamma, beta and the block's head weights
    blocks/<block>/fixed/<name>         fixed random matrices (B, P): never trained
    blocks/<block>/running/<name>       batch-norm running mean and var
    blocks/<block>/opt/<param>/<slot>   optimizer state (step, m, v, ...)
    out/params/<name>, out/opt/<param>/<slot>   the output layer

Format 1 (before stages) numbered the blocks (``params/0/W``, ``opt/out/W/m``, ...); it is read
and renamed (:func:`upgrade`), the arrays unchanged.

It is written uncompressed (``np.savez``), so every member's size on disk is its size in memory; a
reader checks each member's declared shape and dtype against that, and the sum against the memory
available, before it reads a byte of data (:func:`read_arrays`): a crafted archive cannot make it
allocate more than the file holds.

It is written atomically (:func:`bioplaus.files.atomic_write`): a kill leaves either the previous
checkpoint or the new one, never half of one, and never a temporary file in the way of the next.

Order at the end of each epoch: the log epoch is written first, then the checkpoint. A kill
between the two leaves the log one epoch ahead; resuming truncates the log to the checkpoint's
epoch and recomputes that epoch (randomness is keyed by (seed, epoch), so the result is the same).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bioplaus import limits
from bioplaus.files import atomic_write, checkpoint_path  # noqa: F401 -- re-exported: where a checkpoint lives

CHECKPOINT_FORMAT = 2
_META_KEY = "__bioplaus_meta__"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or not ours; one sentence."""


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
    needed = sum(a.nbytes for a in arrays.values()) + 512 * len(arrays)
    atomic_write(path, lambda fh: np.savez(fh, **arrays), needed=needed)


def read_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive written by ``np.savez``, each member's header checked before its
    data is read: a stored (uncompressed) ``.npy`` of numbers (or text) whose declared shape and dtype
    account for exactly its size, all of them together within the memory available. Raises
    CheckpointError (one phrase) otherwise."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as z:
            members = []
            for info in z.infolist():
                if not info.filename.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED:
                    raise CheckpointError(f"{path} is not a bioplaus checkpoint (its member {info.filename[:60]!r} "
                                          "is not a stored .npy array)")
                with z.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version not in ((1, 0), (2, 0)):
                        raise CheckpointError(f"the checkpoint {path} is damaged ({info.filename} has .npy "
                                              f"format {version})")
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _fortran, dtype = read_header(fh)
                    header = fh.tell()
                if dtype.hasobject or dtype.kind not in "fiubU" or len(shape) > 32:
                    raise CheckpointError(f"the checkpoint {path} is damaged ({info.filename[:-4]} holds {dtype} "
                                          "values)")
                nbytes = math.prod(shape) * dtype.itemsize
                if header + nbytes != info.file_size:
                    raise CheckpointError(f"the checkpoint {path} is damaged ({info.filename[:-4]} declares "
                                          f"{limits.human(nbytes)} of data but holds {limits.human(info.file_size)})")
                members.append((info, nbytes))
            limits.check_declared(sum(n for _, n in members), f"the checkpoint {path}")
            for info, _ in members:
                with z.open(info) as fh:
                    arrays[info.filename[:-4]] = np.lib.format.read_array(fh, allow_pickle=False)
    except CheckpointError:
        raise
    except limits.TooLarge as exc:
        raise CheckpointError(str(exc)) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError, SyntaxError) as exc:
        raise CheckpointError(f"the checkpoint {path} is damaged ({exc.__class__.__name__})") from exc
    return arrays


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(state_dict, meta)`` from a checkpoint; raises CheckpointError if missing, damaged or not ours.

    ``meta`` holds at least ``epoch`` (an int >= 0) and ``checkpoint_format``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    arrays = read_arrays(path)
    if _META_KEY not in arrays:
        raise CheckpointError(f"{path} is not a bioplaus checkpoint")
    try:
        meta = limits.loads(str(arrays.pop(_META_KEY)), "its metadata")
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint {path} is damaged ({exc}; its metadata is not JSON)") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"the checkpoint {path} is damaged (its metadata is not a record)")
    epoch, fmt = meta.get("epoch"), meta.get("checkpoint_format", 1)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CheckpointError(f"the checkpoint {path} is damaged (its epoch is {epoch!r})")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise CheckpointError(f"the checkpoint {path} is damaged (its format is {fmt!r})")
    if fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(f"the checkpoint {path} has format {fmt}, newer than this bioplaus reads "
                              f"({CHECKPOINT_FORMAT})")
    meta["checkpoint_format"] = fmt
    for name, a in arrays.items():
        if a.dtype.kind not in "fiub":
            raise CheckpointError(f"the checkpoint {path} is damaged ({name} holds {a.dtype} values)")
    return arrays, meta


def is_checkpoint(path: str) -> bool:
    """True when ``path`` is a regular file that reads as a bioplaus checkpoint."""
    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    return True


def upgrade(state: dict[str, np.ndarray], fmt: int, block_names: Sequence[str]) -> dict[str, np.ndarray]:
    """A state dict of checkpoint format ``fmt`` with the keys of the current format (same arrays).

    Format 1 numbered the blocks; their names come from the network (``block_names``, in order).
    Keys that do not fit either format are kept as they are (the caller's key check names them).
    """
    if fmt == CHECKPOINT_FORMAT:
        return state
    out = {}
    for key, value in state.items():
        parts = key.split("/")
        new = key
        if parts[0] in ("params", "fixed", "running") and len(parts) == 3 and parts[1].isdigit():
            i = int(parts[1])
            if i < len(block_names):
                new = f"blocks/{block_names[i]}/{parts[0]}/{parts[2]}"
        elif parts[0] == "opt" and len(parts) == 4 and parts[1] == "out":
            new = f"out/opt/{parts[2]}/{parts[3]}"
        elif parts[0] == "opt" and len(parts) == 4 and parts[1].isdigit():
            i = int(parts[1])
            if i < len(block_names):
                new = f"blocks/{block_names[i]}/opt/{parts[2]}/{parts[3]}"
        elif parts[0] == "out" and len(parts) == 2:
            new = f"out/params/{parts[1]}"
        out[new] = value
    return out


def describe_mismatch(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[tuple, str]]) -> str | None:
    """None when ``state`` has exactly the keys of ``expected`` (name -> (shape, dtype name)) with those
    shapes and dtypes; else one phrase naming the first difference."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing:
        return f"it has no {missing[0]}" + (f" (and {len(missing) - 1} more arrays are missing)" if len(missing) > 1
                                           else "")
    if extra:
        return f"it has {extra[0]}, which this network does not" + (f" (and {len(extra) - 1} more)"
                                                                        if len(extra) > 1 else "")
    for name in sorted(expected):
        shape, dtype = expected[name]
        got = state[name]
        if tuple(got.shape) != tuple(shape):
            return f"its {name} has shape {tuple(got.shape)}, this network's has {tuple(shape)}"
        if str(got.dtype) != str(dtype):
            return f"its {name} is {got.dtype}, this network's is {dtype}"
    return None
