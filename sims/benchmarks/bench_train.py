"""Full training steps on the CPU: bioplaus (NumPy) vs a PyTorch twin of the same network and rule.

    python sims/benchmarks/bench_train.py [--quick] [--repeat N] [--threads N] [--models mlp]
                                          [--inputs 1x28x28] [--json PATH]

For {mlp 3x1024 on 28x28, vgg8b on 32x32x3, vgg8b on 28x28x1} x {glob, predsim, predsim-bpf}, batch
128, float32: one step = forward, the rule's updates and Adam (bioplaus: the engine's own
``Stage.train_step``, with the dropout masks it draws and its update, Adam and whatever the rule does
after an update; the twin: ``sims/benchmarks/torch_twin.py``). Both use the same number of threads
(numpy's BLAS threads, read with threadpoolctl, given to ``torch.set_num_threads``; ``--threads N``
sets both, and bioplaus's own element-wise passes and convolution chunks, as a run's ``--threads``).
After a warm-up
(two steps a side for the mlp, one for the vggs), bioplaus, the twin and a 1024^3 float32 GEMM are timed in
turn (interleaved, A/B order alternating, so a busy neighbour on a shared machine slows all three
alike) ``--repeat`` times; the table shows medians and the ratio of samples/s. Our step runs with
``--conv-algorithm auto`` (on the CPU its rule: 3x3 convolutions by Winograd's F(4x4, 3x3) where that
measured faster, im2col elsewhere); for the VGGs a fourth side, interleaved with them, is our step
with every convolution by im2col (``--conv-algorithm im2col``): the columns ``im2col ms`` and
``gain`` (im2col ms / ours ms).

NOTE (shared machines): torch's OpenMP threads spin-wait by default, which on an oversubscribed
2-core machine makes the twin 3-8x slower than it is, so this script sets ``OMP_WAIT_POLICY=PASSIVE``.
OpenBLAS's own threads suffer the same way when the load is above the core count; run with
``--threads 1`` then (both sides get one thread).

Both sides run with the allocator setting of a bioplaus run (``backend.keep_freed_memory``: freed
arrays are reused, not returned to the system and faulted back in the next step), in one process.

FLOPs of a step are counted from the shapes, as the blocks' kinds, the heads and the carriers declare
them (``budget.step_costs``): forward 2*MACs of every dense/conv layer (encoders, heads, the similarity
matrices' X Xᵀ), backward 2x forward for a layer whose input gets an error (dx and dW) and 1x for one
that only needs dW (a local rule's encoder, the first layer, the output layer in local rules). ``% mm``
= achieved GFLOP/s / the GEMM's GFLOP/s measured next to it. ``Adam ms``: the part of our step spent in
the updates (the optimizer, memory-bound: every parameter, its gradient and both moments pass through
memory once per step; and a rule's after-update, none in these rules), a mean over the timed steps.

BLAS kernels: benchmarks are run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset in the
benchmark's command alone (they force older OpenBLAS kernels; a user's machine has no such override):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python sims/benchmarks/bench_train.py ...

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

# torch's OpenMP threads otherwise spin after each parallel region; on a shared 2-core machine they
# steal the cores from the other side of the A/B pair (and from torch itself), making torch look 3-8x
# slower than it is. Passive waiting gives the twin its fair speed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# and OpenBLAS's idle threads (ours) spin for a tenth of a second after each call, taking a core from our own
# element-wise threads: a bioplaus run shortens that spin (bioplaus/__init__.py), so here too. OpenBLAS reads
# the variable when NumPy loads it: it must be set before the first `import numpy` of the process (until
# 2026-12-03 it was set after it, and had no effect: the 2-thread rows measured before then ran with the spin).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "12")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine
import numpy as np

from bioplaus.backend import get_backend, keep_freed_memory, set_cpu_threads
from bioplaus.blocks import LEAKY_SLOPE
from bioplaus.budget import step_costs
from bioplaus.config import Config
from bioplaus.models import NetSpec, build_spec
from bioplaus.stage import Stage

BATCH = 128
LR = 1e-4
CASES = [("mlp", (1, 28, 28)), ("vgg8b", (3, 32, 32)), ("vgg8b", (1, 28, 28))]
VARIANTS = ("glob", "predsim", "predsim-bpf")
QUICK = [("mlp", (1, 28, 28), v) for v in VARIANTS] + [("vgg8b", (1, 28, 28), "predsim")]


def case_config(model: str, variant: str) -> Config:
    """The paper's setting for the case: mlp 3x1024 dropout 0.1; vgg8b dropout 0.2, one dense block;
    leaky ReLU for the sim variants, as in the recipes."""
    nonlin = "leakyrelu" if "sim" in variant else "relu"
    if model == "mlp":
        return Config(variant=variant, model="mlp", num_layers=3, num_hidden=1024, dropout=0.1,
                      nonlin=nonlin).resolve()
    return Config(variant=variant, model=model, num_layers=1, num_hidden=1024, dropout=0.2,
                  nonlin=nonlin, dim_in_decoder=2048).resolve()


# ------------------------------------------------------------------------------ FLOPs
def step_flops(spec: NetSpec, variant: str, N: int, target_proj_size: int = 128) -> float:
    """FLOPs of one training step of ``variant`` on a batch of N, counted from the shapes (the engine's
    own declared costs: ``budget.step_costs``)."""
    costs, out = step_costs(spec, variant, N, target_proj_size)
    return sum(c.flops for c in costs) + out.flops


# ------------------------------------------------------------------------------ the two steps
def bioplaus_step(cfg: Config, spec: NetSpec, x: np.ndarray, y: np.ndarray, backend=None):
    """A closure running one bioplaus training step per call: the engine's own ``Stage.train_step`` (its
    dropout masks, its updates; learning rate ``LR``), on the CPU unless ``backend`` says otherwise (the
    step then waits for the device before it returns). ``step.adam_seconds`` sums the time in updates."""
    backend = backend or get_backend("cpu")
    stage = Stage(cfg.replace(lr=LR), spec, backend)
    stage.begin_epoch(1)  # epoch 1's dropout streams, as the trainer draws them
    x, y = backend.asarray(x), backend.asarray(y)
    update = stage.update

    def timed_update(i, grads):
        t0 = time.perf_counter()
        update(i, grads)
        step.adam_seconds += time.perf_counter() - t0  # CPU: Adam's passes are synchronous

    stage.update = timed_update

    def step():
        out = stage.train_step(x, y)
        backend.synchronize()
        return out

    step.adam_seconds = 0.0  # time inside the updates, summed over calls
    step.stage = stage
    return step


def torch_step(cfg: Config, spec: NetSpec, x: np.ndarray, y: np.ndarray):
    import torch
    from torch_twin import TorchTwin

    torch.manual_seed(cfg.seed)
    slope = LEAKY_SLOPE if cfg.nonlin == "leakyrelu" else 0.0
    twin = TorchTwin(spec, cfg.variant, cfg.beta, cfg.dropout, slope, cfg.target_proj_size, LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    return lambda: twin.step(xt, yt)


def gemm_seconds(n: int = 1024):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    C = np.empty((n, n), dtype=np.float32)
    return lambda: np.matmul(A, B, out=C), 2.0 * n**3


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def in_turn(sides: list, r: int) -> list:
    """Round ``r`` of an interleaved comparison: every side once, side ``r mod len`` first."""
    k = r % len(sides)
    return sides[k:] + sides[:k]


def bench_case(model: str, shape, variant: str, repeat: int, warmup: int, feat_mult: float = 1.0) -> dict:
    cfg = case_config(model, variant)
    if feat_mult != 1.0:
        cfg = cfg.replace(feat_mult=feat_mult)
    spec = build_spec(cfg, shape, 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *shape), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    ours, theirs = bioplaus_step(cfg, spec, x, y), torch_step(cfg, spec, x, y)
    gemm, gemm_flop = gemm_seconds()
    t_ours, t_theirs, t_im2col, t_gemm = [], [], [], []
    sides = [(ours, t_ours), (theirs, t_theirs)]
    if model != "mlp":
        im2col_cfg = cfg.replace(conv_algorithm="im2col")
        sides.append((bioplaus_step(im2col_cfg, build_spec(im2col_cfg, shape, 10), x, y), t_im2col))
    for _ in range(warmup):
        for fn, _acc in sides:
            fn()
        gemm()
    ours.adam_seconds = 0.0
    for r in range(repeat):  # interleaved (each side leads in turn), GEMM rate next to them
        for fn, acc in in_turn(sides, r):
            acc.append(timed(fn))
        t_gemm.append(statistics.median(timed(gemm) for _ in range(5)))  # a 15 ms GEMM: 5 tries per round
    s_ours, s_theirs, s_gemm = (statistics.median(t) for t in (t_ours, t_theirs, t_gemm))
    s_im2col = statistics.median(t_im2col) if t_im2col else None
    flop = step_flops(spec, variant, BATCH, cfg.target_proj_size)
    gflops, mm = flop / s_ours / 1e9, gemm_flop / s_gemm / 1e9
    return {
        "model": model, "input": "x".join(map(str, shape)), "variant": variant, "batch": BATCH,
        "feat_mult": cfg.feat_mult if model != "mlp" else None,
        "gflop_per_step": flop / 1e9,
        "bioplaus_ms": 1e3 * s_ours, "torch_ms": 1e3 * s_theirs, "bioplaus_adam_ms": 1e3 * ours.adam_seconds / repeat,
        "bioplaus_samples_per_s": BATCH / s_ours, "torch_samples_per_s": BATCH / s_theirs,
        "ratio": s_theirs / s_ours,
        "bioplaus_im2col_ms": None if s_im2col is None else 1e3 * s_im2col,
        "gain_over_im2col": None if s_im2col is None else s_im2col / s_ours,
        "bioplaus_gflops": gflops, "matmul_gflops": mm, "pct_of_matmul": 100 * gflops / mm,
        "repeat": repeat,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=machine.NOTE)
    ap.add_argument("--quick", action="store_true", help="mlp x 3 variants and vgg8b 28x28 predsim, fewer repeats")
    ap.add_argument("--repeat", type=int, default=None, help="timed steps per side (default 7 mlp / 2 vgg; quick 3/1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads for numpy (threadpoolctl) and torch.set_num_threads (default: numpy's)")
    ap.add_argument("--models", default=None, help="comma-separated subset of models (e.g. mlp)")
    ap.add_argument("--inputs", default=None, help="comma-separated subset of input shapes (e.g. 1x28x28)")
    ap.add_argument("--feat-mult", type=float, default=1.0,
                    help="the vggs' channel multiplier (the comparison with the authors' code runs 0.25); an "
                         "epoch's training time is about its steps (469 on Fashion-MNIST) times a step's")
    ap.add_argument("--json", type=machine.json_path, help="write the rows to this new JSON file")
    args = ap.parse_args(argv)
    import torch

    limiter = None
    if args.threads:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=args.threads, user_api="blas")
        set_cpu_threads(args.threads)  # our element-wise passes and convolution chunks too, as a run's --threads
    keep_freed_memory()  # as a run's process does (runner.execute); the twin, in this process, gets it too
    facts = machine.print_header()  # after the limit: the threads the steps run with
    threads = facts["blas_threads"] or os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__} threads: {threads} (set to the BLAS's)", flush=True)
    cases = QUICK if args.quick else [(m, s, v) for m, s in CASES for v in VARIANTS]
    if args.models:
        cases = [c for c in cases if c[0] in args.models.split(",")]
    if args.inputs:
        cases = [c for c in cases if "x".join(map(str, c[1])) in args.inputs.split(",")]
    rows = []
    for model, shape, variant in cases:
        small = model == "mlp"
        # a vgg8b step is 0.4-1.8 TFLOP (seconds on 2 cores): one warm-up step a side (its one-off costs, first-touch
        # page faults, Winograd's transformed filters and buffers, oneDNN's primitives, made the first step 1.7-2.4x
        # a later one, measured 2026-12-03) and 2 timed steps; an epoch is hundreds of steps
        repeat = args.repeat or ((3 if small else 1) if args.quick else (7 if small else 2))
        warmup = 2 if small else 1
        rows.append(bench_case(model, shape, variant, repeat, warmup, 1.0 if small else args.feat_mult))
        r = rows[-1]
        print(f"  done {model} {r['input']} {variant}: ours {r['bioplaus_ms']:.0f} ms, torch {r['torch_ms']:.0f} ms, "
              f"ratio {r['ratio']:.2f}, {r['pct_of_matmul']:.0f}% of matmul, load {os.getloadavg()[0]:.1f}",
              file=sys.stderr, flush=True)
    if limiter is not None:
        limiter.restore_original_limits()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {threads} BLAS/torch threads, "
          f"numpy {np.__version__}, torch {torch.__version__}, load (1 min) {load:.2f}; batch {BATCH}, float32; "
          f"{'' if args.feat_mult == 1.0 else f'vgg feat-mult {args.feat_mult:g}; '}"
          f"medians of interleaved runs")
    head = (f"{'model':6s} {'input':8s} {'variant':12s} {'GFLOP':>6s} {'ours ms':>8s} {'torch ms':>8s} "
            f"{'Adam ms':>7s} {'ours/s':>7s} {'torch/s':>7s} {'ratio':>6s} {'GFLOP/s':>7s} {'mm GF/s':>7s} {'% mm':>5s} "
            f"{'im2col ms':>9s} {'gain':>6s}")
    print(head)
    for r in rows:
        wino = (f"{r['bioplaus_im2col_ms']:9.1f} {r['gain_over_im2col']:5.2f}x" if r["bioplaus_im2col_ms"] is not None
                else f"{'-':>9s} {'-':>6s}")
        print(f"{r['model']:6s} {r['input']:8s} {r['variant']:12s} {r['gflop_per_step']:6.1f} {r['bioplaus_ms']:8.1f} "
              f"{r['torch_ms']:8.1f} {r['bioplaus_adam_ms']:7.1f} {r['bioplaus_samples_per_s']:7.0f} {r['torch_samples_per_s']:7.0f} "
              f"{r['ratio']:5.2f}x {r['bioplaus_gflops']:7.1f} {r['matmul_gflops']:7.1f} {r['pct_of_matmul']:4.0f}% {wino}")
    print("ratio = bioplaus samples/s / torch samples/s (>1: bioplaus faster); ours: --conv-algorithm auto; im2col ms: "
          "ours with --conv-algorithm im2col (gain = im2col ms / ours ms)")
    if args.json:
        for r in rows:
            r["load_1min"] = load
            r["threads"] = threads
            r["machine"] = facts
        machine.write_json(args.json, rows)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
