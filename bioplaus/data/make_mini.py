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
import lzma
from pathlib import Path

import numpy as np

from .dataset import EMBEDDED_DIR, EMBEDDED_SUFFIX, load_dataset

PER_CLASS_TRAIN = 600
PER_CLASS_TEST = 100
NAME = "fashion-mnist-mini"


def first_per_class(y: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, in file order."""
    picks = [np.flatnonzero(y == c)[:per_class] for c in range(num_classes)]
    for c, p in enumerate(picks):
        if len(p) < per_class:
            raise ValueError(f"class {c} has only {len(p)} samples, {per_class} needed")
    return np.sort(np.concatenate(picks))


def idx_bytes(a: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian sizes, data."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
    return header + a.tobytes()


def build(data_dir: str | None = None, out: str | Path | None = None) -> list[Path]:
    """Write the mini subset's four .xz IDX files; return their paths."""
    ds = load_dataset("fashion-mnist", data_dir=data_dir)
    out = Path(out) if out is not None else EMBEDDED_DIR / NAME
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for prefix, x, y, per_class in (
        ("train", ds.x_train, ds.y_train, PER_CLASS_TRAIN),
        ("t10k", ds.x_test, ds.y_test, PER_CLASS_TEST),
    ):
        keep = first_per_class(y, per_class, ds.spec.num_classes)
        for kind, arr in (("images-idx3", x[keep][:, 0]), ("labels-idx1", y[keep])):
            path = out / f"{prefix}-{kind}-ubyte{EMBEDDED_SUFFIX}"
            path.write_bytes(lzma.compress(idx_bytes(arr), format=lzma.FORMAT_XZ, preset=6))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding full Fashion-MNIST")
    parser.add_argument("--out", default=None, help="output folder (default: the package's)")
    args = parser.parse_args(argv)
    for path in build(args.data_dir, args.out):
        print(f"{path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
