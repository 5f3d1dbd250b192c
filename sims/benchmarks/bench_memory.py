"""Peak memory of one training step: global backprop vs the local rules (vgg11b, batch 128, 32x32x3).

    python sims/benchmarks/bench_memory.py [--model vgg11b] [--batch 128] [--json PATH]

Each variant runs in a fresh subprocess, so one variant's freed memory cannot hide another's peak.
The child builds the network and its Adam states (a ``Stage``), then runs ONE training step of the
engine (``Stage.train_step``: forward, the rule's updates, Adam) under ``tracemalloc`` (NumPy reports
its array allocations to it) and reports:

- ``step_peak_mb``: the step's peak of traced memory above what was allocated before it (parameters,
  fixed matrices, Adam states, the input batch) -- the activations, caches and gradients the rule
  keeps alive at once;
- ``total_peak_mb``: the same peak including the parameters and states;
- ``max_rss_mb``: the child's peak resident set size (``ru_maxrss``: interpreter and libraries too).

Global backprop must hold every block's caches until the backward pass reaches it; a local rule
updates each block as soon as its forward is done and can drop its caches, so its step peak is
about one block's worth (target: local <= 40% of glob).

BLAS kernels: benchmarks are run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset in the
benchmark's command alone (they force older OpenBLAS kernels; a user's machine has no such override):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python sims/benchmarks/bench_memory.py ...

Tests and CI leave the variables as they are. The header prints the machine, numpy and its BLAS
(library, version, kernel, threads), and a WARNING line when either variable is set (``machine.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine

VARIANTS = ("glob", "predsim", "predsim-bpf")


def child(model: str, variant: str, batch: int) -> dict:
    from bioplaus.backend import get_backend
    from bioplaus.config import Config
    from bioplaus.models import build_spec
    from bioplaus.stage import Stage

    tracemalloc.start()
    nonlin = "leakyrelu" if "sim" in variant else "relu"
    cfg = Config(variant=variant, model=model, num_layers=1, dropout=0.2, nonlin=nonlin, lr=1e-4,
                 dim_in_decoder=2048).resolve()
    backend = get_backend("cpu")
    spec = build_spec(cfg, (3, 32, 32), 10)
    stage = Stage(cfg, spec, backend)  # the engine's own step: its masks, its updates (Adam), its arrays
    stage.begin_epoch(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, batch)

    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    stage.train_step(x, y)
    loss = stage.train_sums.loss / batch
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "model": model, "variant": variant, "batch": batch,
        "params_and_state_mb": before / 2**20,
        "step_peak_mb": (peak - before) / 2**20,
        "total_peak_mb": peak / 2**20,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_seconds": seconds,
        "loss": float(loss),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=machine.NOTE)
    ap.add_argument("--model", default="vgg11b")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", type=machine.json_path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.child, args.batch)))
        return 0
    facts = machine.print_header()
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant, "--model", args.model, "--batch", str(args.batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  done {variant}", file=sys.stderr, flush=True)
    glob = next((r for r in rows if r["variant"] == "glob"), None)
    for r in rows:
        for key in ("step_peak_mb", "total_peak_mb", "max_rss_mb"):
            r[key.replace("_mb", "_vs_glob")] = r[key] / glob[key] if glob else None
        r["machine"] = facts
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}; {args.model}, batch "
          f"{args.batch}, 3x32x32, float32; one training step per fresh subprocess (tracemalloc, ru_maxrss)")
    print(f"{'variant':12s} {'params+Adam MB':>14s} {'step peak MB':>12s} {'vs glob':>7s} {'total peak MB':>13s} "
          f"{'vs glob':>7s} {'max RSS MB':>10s} {'vs glob':>7s}")
    for r in rows:
        print(f"{r['variant']:12s} {r['params_and_state_mb']:14.0f} {r['step_peak_mb']:12.0f} "
              f"{100 * (r['step_peak_vs_glob'] or 0):6.0f}% {r['total_peak_mb']:13.0f} "
              f"{100 * (r['total_peak_vs_glob'] or 0):6.0f}% {r['max_rss_mb']:10.0f} {100 * (r['max_rss_vs_glob'] or 0):6.0f}%")
    if args.json:
        machine.write_json(args.json, rows)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
