"""Rebuild the embedded ``fashion-mnist-mini`` from the full Fashion-MNIST files.

    python -m bioplaus.data.make_mini [--data-dir DIR] [--out DIR]

The subset is the first 600 images of each class in the training file's order (6,000) and the
first 100 of each class in the test file's order (1,000), kept in file order, written as IDX
files compressed with xz (preset 6): ``train-images-idx3-ubyte.xz`` and so on. The output is a
pure function of the input files' contents: running it twice gives identical bytes.

Fashion-MNIST is Copyright (c) 2017 Zalando SE, MIT license (``LICENSE-fashion-mnist.txt``
beside the files).
"""

from __future__ import annotations

import argparse
import contextlib
import lzma
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .dataset import EMBEDDED_DIR, EMBEDDED_SUFFIX, load_dataset
from .fetch import folder_name, show, write_problem
from .registry import DataError

PER_CLASS_TRAIN = 600
PER_CLASS_TEST = 100
NAME = "fashion-mnist-mini"


def first_per_class(y: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, in file order."""
    picks = [np.flatnonzero(y == c)[:per_class] for c in range(num_classes)]
    for c, p in enumerate(picks):
        if len(p) < per_class:
            raise DataError(f"class {c} has only {len(p)} samples, {per_class} needed")
    return np.sort(np.concatenate(picks))


def idx_bytes(a: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian sizes, data."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
    return header + a.tobytes()


def build(data_dir: str | None = None, out: str | Path | None = None) -> list[Path]:
    """Write the mini subset's four .xz IDX files; return their paths."""
    out = folder_name(out, "--out") if out is not None else EMBEDDED_DIR / NAME
    problem = write_problem(out)  # checked before the (slow) read, and before anything is written
    if problem is not None:
        raise DataError(f"--out {show(out)} cannot be written because {problem}")
    ds = load_dataset("fashion-mnist", data_dir=data_dir)
    blobs = {}  # everything is computed before the first byte is written
    for prefix, x, y, per_class in (
        ("train", ds.x_train, ds.y_train, PER_CLASS_TRAIN),
        ("t10k", ds.x_test, ds.y_test, PER_CLASS_TEST),
    ):
        keep = first_per_class(y, per_class, ds.spec.num_classes)
        for kind, arr in (("images-idx3", x[keep][:, 0]), ("labels-idx1", y[keep])):
            name = f"{prefix}-{kind}-ubyte{EMBEDDED_SUFFIX}"
            blobs[name] = lzma.compress(idx_bytes(arr), format=lzma.FORMAT_XZ, preset=6)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"--out {show(out)} cannot be created ({exc.strerror or type(exc).__name__})") from None
    return [_write_atomic(out / name, blob) for name, blob in blobs.items()]


def _write_atomic(path: Path, blob: bytes) -> Path:
    """Write ``blob`` to ``path`` through a temporary file and ``os.replace``: never a partial file."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise DataError(f"{show(path)} cannot be written ({exc.strerror or type(exc).__name__})") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding full Fashion-MNIST")
    parser.add_argument("--out", default=None, help="output folder (default: the package's)")
    args = parser.parse_args(argv)
    try:
        written = build(args.data_dir, args.out)
    except DataError as exc:
        print(f"make_mini: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in written:
        print(f"{path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
