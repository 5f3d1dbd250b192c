"""A full training epoch (data loading and augmentation included) vs pure training steps.

    python sims/benchmarks/bench_epoch.py [--recipe fashion-mnist-mlp-predsim] [--every 4] [--json PATH]

Runs one epoch of the recipe through :class:`bioplaus.train.Trainer` on the full dataset (the
batches come from ``load_dataset`` + ``TrainBatches``: shuffling, crop/flip augmentation,
normalisation; per-batch statistics accumulated on the device; the epoch's host sync and weight
norms at the end). Interleaved with it, every ``--every``-th batch a second, identical trainer runs
one *pure* training step (the engine's ``Stage.train_step``, its dropout masks and its updates, on a
batch already in memory) and times it; that time is taken out of the epoch's time. So both sides see the
same machine load. Prints the epoch's time per step over the pure step's (target <= 1.15), as means
(the epoch is a sum) and as medians (robust to a neighbour's burst).

BLAS kernels: benchmarks are run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset in the
benchmark's command alone (they force older OpenBLAS kernels; a user's machine has no such override):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python sims/benchmarks/bench_epoch.py ...

Tests and CI leave the variables as they are. The header prints the machine, numpy and its BLAS
(library, version, kernel, threads), and a WARNING line when either variable is set (``machine.py``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# a run's short OpenBLAS spin (bioplaus/__init__.py), set before NumPy loads OpenBLAS (bench_train.py says why)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "12")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine

from bioplaus.backend import get_backend, keep_freed_memory
from bioplaus.config import Config
from bioplaus.data import load_dataset
from bioplaus.recipes import get_recipe
from bioplaus.train import Trainer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=machine.NOTE)
    ap.add_argument("--recipe", default="fashion-mnist-mlp-predsim")
    ap.add_argument("--dataset", default=None, help="override the recipe's dataset (e.g. fashion-mnist-mini)")
    ap.add_argument("--every", type=int, default=4, help="time one pure step every this many epoch batches")
    ap.add_argument("--json", type=machine.json_path)
    args = ap.parse_args(argv)
    keep_freed_memory()  # as a run's process does (runner.execute)
    facts = machine.print_header()
    values = get_recipe(args.recipe)
    if args.dataset:
        values["dataset"] = args.dataset
    cfg = Config.from_dict({**values, "device": "cpu"}).resolve()
    backend = get_backend("cpu")
    t0 = time.perf_counter()
    dataset = load_dataset(cfg.dataset)
    load_s = time.perf_counter() - t0
    trainer = Trainer(cfg, backend, dataset)
    twin = Trainer(cfg, backend, dataset)  # runs the pure steps; the measured epoch's training is untouched
    x, y = next(iter(twin.batches.epoch(1)))
    stage = twin.stages[0]
    stage.begin_epoch(99)

    def pure_step():
        stage.train_step(x, y)

    for _ in range(2):  # warm-up
        pure_step()
    pure, intervals = [], []
    state = {"calls": 0, "excluded": 0.0, "last": None}

    def on_batch(done, total):
        now = time.perf_counter()
        if state["last"] is not None:
            intervals.append(now - state["last"])
        state["calls"] += 1
        if state["calls"] % args.every == 0:
            t = time.perf_counter()
            pure_step()
            pure.append(time.perf_counter() - t)
        end = time.perf_counter()
        state["excluded"] += end - now
        state["last"] = end

    t0 = time.perf_counter()
    result = trainer.train_epoch(on_batch)
    wall = time.perf_counter() - t0
    steps = state["calls"]
    epoch_s = wall - state["excluded"]
    per_step_epoch = epoch_s / steps
    row = {
        "recipe": args.recipe, "dataset": cfg.dataset, "model": cfg.model, "variant": cfg.variant,
        "batch": cfg.batch_size, "steps": steps, "samples": trainer.batches.num_samples,
        "dataset_load_s": load_s, "epoch_s": epoch_s,
        "epoch_ms_per_step_mean": 1e3 * per_step_epoch,
        "pure_ms_per_step_mean": 1e3 * statistics.fmean(pure),
        "epoch_ms_per_step_median": 1e3 * statistics.median(intervals),
        "pure_ms_per_step_median": 1e3 * statistics.median(pure),
        "pure_samples": len(pure),
        "train_loss": result["train_loss"], "train_error": result["train_error"],
        "load_1min": os.getloadavg()[0], "machine": facts,
    }
    row["ratio_mean"] = row["epoch_ms_per_step_mean"] / row["pure_ms_per_step_mean"]
    row["ratio_median"] = row["epoch_ms_per_step_median"] / row["pure_ms_per_step_median"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, load (1 min) "
          f"{row['load_1min']:.2f}")
    print(f"{args.recipe} on {cfg.dataset}: {row['samples']} samples, {steps} steps of {cfg.batch_size} "
          f"(dataset read in {load_s:.1f} s, not counted)")
    print(f"epoch (Trainer: loading, augmentation, step, statistics): {epoch_s:7.1f} s, "
          f"{row['epoch_ms_per_step_mean']:.1f} ms/step mean, {row['epoch_ms_per_step_median']:.1f} median")
    print(f"pure train steps ({len(pure)} timed, interleaved):       {row['pure_ms_per_step_mean']:.1f} ms/step mean, "
          f"{row['pure_ms_per_step_median']:.1f} median")
    print(f"epoch / pure steps: {row['ratio_mean']:.3f} (means), {row['ratio_median']:.3f} (medians); target <= 1.15")
    print(f"train loss {row['train_loss']:.4f}, train error {row['train_error']:.2f}%")
    if args.json:
        machine.write_json(args.json, row)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
