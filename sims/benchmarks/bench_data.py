"""Throughput of the data layer: images/s for one training epoch of crop + flip + normalise.

    python sims/benchmarks/bench_data.py [--device cpu|gpu|auto] [--dataset fashion-mnist-mini]
                                         [--batch-size 128] [--epochs 3]

Prints images/s per configuration (28x28 grey: the chosen dataset; 32x32 RGB: random CIFAR-sized
images) for plain batching, crop+flip, crop+flip+cutout, and classes-per-batch grouping. NumPy
runs single-threaded here, so the CPU figure is per core. GPU timings synchronise the device.

BLAS kernels: benchmarks are run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset in the
benchmark's command alone (they force older OpenBLAS kernels; a user's machine has no such override):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python sims/benchmarks/bench_data.py ...

Tests and CI leave the variables as they are. The header prints the machine, numpy and its BLAS
(library, version, kernel, threads), and a WARNING line when either variable is set (``machine.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine

from bioplaus.backend import get_backend
from bioplaus.data import Dataset, TrainBatches, get_spec, load_dataset


def cifar_sized(n: int = 50000, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 100, n)
    return Dataset(get_spec("cifar100"), x, y, x[:10], y[:10], "random")


def images_per_second(batches: TrainBatches, backend, epochs: int) -> float:
    for _ in batches.epoch(0):  # warm-up (allocations, CUDA kernels)
        break
    backend.synchronize()
    start = time.perf_counter()
    total = 0
    for epoch in range(1, epochs + 1):
        for x, _ in batches.epoch(epoch):
            total += len(x)
    backend.synchronize()
    return total / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=machine.NOTE)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--dataset", default="fashion-mnist-mini")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    backend = get_backend(args.device)
    machine.print_header()
    print(f"device: {backend.device}")
    grey = load_dataset(args.dataset)
    rgb = cifar_sized()
    plain_grey = dataclasses.replace(grey, spec=dataclasses.replace(grey.spec, crop_padding=0, hflip=False))
    runs = [
        (f"{args.dataset} {grey.spec.input_shape} normalise only", plain_grey, {}),
        (f"{args.dataset} crop(pad {grey.spec.crop_padding})+flip+normalise", grey, {}),
        (f"{args.dataset} crop+flip+normalise+cutout(14)", grey, {"cutout_length": 14}),
        ("cifar100-sized (3, 32, 32) crop(pad 4)+flip+normalise", rgb, {}),
        ("cifar100-sized crop+flip+normalise, 20 classes per batch", rgb, {"classes_per_batch": 20}),
    ]
    for label, ds, kw in runs:
        batches = TrainBatches(ds, backend, args.batch_size, seed=1, **kw)
        rate = images_per_second(batches, backend, args.epochs)
        print(f"{label:62s} {rate:12,.0f} images/s")


if __name__ == "__main__":
    main()
