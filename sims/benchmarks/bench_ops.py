"""Benchmark the engine's heavy ops on this CPU against its own float32 matmul rate.

    python sims/benchmarks/bench_ops.py [--quick] [--repeat N] [--threads N] [--conv-algorithms] [--json PATH]

Prints the machine's float32 GEMM rate (2048^3 sgemm, best of --repeat), then forward+backward
GFLOP/s of the dense and conv ops at the paper's layer sizes as a percentage of that rate, and the
peak memory (tracemalloc) of each conv's forward+backward. On a shared machine the GEMM rate is
re-measured next to every op (interleaved, best of --repeat each), and the percentage uses that
neighbouring rate, so a busy neighbour slows both sides alike. FLOPs counted: forward 2*M*N*K, and the
same again for dW and for dx (the 3-channel input conv is a first layer: no dx).
The memory-bound ops (the heads' average pooling, the 2x2 max pool, batch norm + φ, Adam) are
timed forward + backward on one feature map and reported in ms and as multiples of one copy of that
map (``np.copyto``, the machine's memory speed, timed next to them).
Also times building the im2col buffer two ways (kh*kw per-offset copies vs the op's one copy of a
strided window view), and a whole conv forward + backward at vgg's layer sizes with either (interleaved,
median of --repeat, same numbers checked), the layout choice the conv op rests on. Then the 3x3
convolutions of the paper's nets (``CONV_SHAPES``: vgg8b on 32x32x3 and 28x28x1, at --feat-mult 1 and
0.25, vgg11b's 2x2 maps) by im2col and by Winograd's F(4x4, 3x3) (``--conv-algorithm im2col`` and
``winograd``), forward + backward with dx and with dW only, interleaved, median of --repeat, with each
one's largest float32 error against the float64 convolution (relative to the largest output) and the
one "auto" takes on the CPU: the measurement behind ``ops.conv.AUTO_RULES`` (``--conv-algorithms``: this
table alone).

BLAS kernels: benchmarks are run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset in the
benchmark's command alone (they force older OpenBLAS kernels; a user's machine has no such override):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python sims/benchmarks/bench_ops.py ...

Tests and CI leave the variables as they are. The header prints the machine, numpy and its BLAS
(library, version, kernel, threads), and a WARNING line when either variable is set (``machine.py``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import tracemalloc
from pathlib import Path

# a run's short OpenBLAS spin (bioplaus/__init__.py), set before NumPy loads OpenBLAS (bench_train.py says why)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "12")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine

from bioplaus import ops
from bioplaus.backend import set_cpu_threads
from bioplaus.ops import conv as conv_module


def best_time(fn, repeat: int) -> float:
    fn()  # warm up (allocator, BLAS threads)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_rate(n: int, repeat: int) -> float:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    C = np.empty((n, n), dtype=np.float32)
    t = best_time(lambda: np.matmul(A, B, out=C), repeat)
    return 2 * n**3 / t / 1e9


def with_neighbour_rate(bench, n: int, repeat: int) -> dict:
    """Run ``bench(1)`` and the GEMM rate in turn ``repeat`` times; keep the best of each."""
    best, rate = None, 0.0
    for _ in range(repeat):
        rate = max(rate, matmul_rate(n, 1))
        r = bench(1)
        if best is None or r["seconds"] < best["seconds"]:
            best = r
    best["matmul_gflops"] = rate
    return best


def bench_dense(N: int, D: int, repeat: int) -> dict:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, D), dtype=np.float32)
    W = rng.standard_normal((D, D), dtype=np.float32)
    b = np.zeros(D, dtype=np.float32)
    dout = rng.standard_normal((N, D), dtype=np.float32)

    def step():
        _, cache = ops.dense_forward(x, W, b)
        ops.dense_backward(dout, cache)

    t = best_time(step, repeat)
    return {"name": f"dense {D}x{D} batch {N}", "gflop": 3 * 2 * N * D * D / 1e9, "seconds": t}


def bench_conv(N: int, C: int, F: int, size: int, repeat: int, need_dx: bool = True) -> dict:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, C, size, size), dtype=np.float32)
    W = rng.standard_normal((F, C, 3, 3), dtype=np.float32) * 0.01
    b = np.zeros(F, dtype=np.float32)
    dout = rng.standard_normal((N, F, size, size), dtype=np.float32)

    def step():
        _, cache = ops.conv2d_forward(x, W, b, 1, 1)
        ops.conv2d_backward(dout, cache, need_dx=need_dx)

    t = best_time(step, repeat)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    step()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    flop = 2 * N * size * size * F * C * 9
    return {
        "name": f"conv {C}->{F} at {size}x{size} batch {N}" + ("" if need_dx else " (no dx)"),
        "gflop": (3 if need_dx else 2) * flop / 1e9,
        "seconds": t,
        "peak_mb": peak / 2**20,
        "io_mb": (x.nbytes + dout.nbytes) / 2**20,
    }


def bench_memory_bound(N: int, repeat: int) -> list[dict]:
    """Forward + backward of the memory-bound ops on one (N, 256, 28, 28) map, against one copy of it."""
    from bioplaus.optim import Adam

    rng = np.random.default_rng(4)
    x = rng.standard_normal((N, 256, 28, 28), dtype=np.float32)
    dx = rng.standard_normal(x.shape, dtype=np.float32)
    scratch = np.empty_like(x)
    gamma, beta = np.ones(256, np.float32), np.zeros(256, np.float32)
    mean, var = np.zeros(256, np.float32), np.ones(256, np.float32)
    pooled, avg_cache = ops.avgpool2d_forward(x, (8, 8), (4, 4))
    _, max_cache = ops.maxpool2d_forward(x, 2)
    W = rng.standard_normal((1024, 1024), dtype=np.float32)
    g = rng.standard_normal(W.shape, dtype=np.float32)
    opt = Adam()
    state = opt.init_state(W)

    def bn_act():  # as a block runs it, in its inputs' buffers: copying them first counts against it
        np.copyto(scratch, x)
        _, cache, _, _ = ops.bn_act_forward(scratch, gamma, beta, mean, var, True, 0.01, overwrite=True)
        ops.bn_act_backward(dx.copy(), cache, overwrite_dh=True)

    def bn_then_act():  # the same math as the plain reference ops (BN, then φ in place)
        z, bn_cache, _, _ = ops.batchnorm_forward(x, gamma, beta, mean, var, True)
        _, act_cache = ops.act_forward(z, 0.01, overwrite=True)
        ops.batchnorm_backward(ops.act_backward(dx, act_cache), bn_cache)

    cases = [
        (f"avgpool 8x8 pad 4, 256 ch 28x28 batch {N}",
         lambda: (ops.avgpool2d_forward(x, (8, 8), (4, 4)), ops.avgpool2d_backward(pooled, avg_cache))),
        (f"maxpool 2x2, 256 ch 28x28 batch {N}",
         lambda: (ops.maxpool2d_forward(x, 2), ops.maxpool2d_backward(dx[:, :, :14, :14], max_cache))),
        (f"bn + leaky ReLU fused, 256 ch 28x28 batch {N}", bn_act),
        ("bn then leaky ReLU (plain ops), same map", bn_then_act),
        ("adam step, 1M parameters", lambda: opt.step(W, g, state, 1e-4)),
    ]
    copy_s = best_time(lambda: np.copyto(scratch, x), repeat)
    rows = []
    for name, fn in cases:
        t = best_time(fn, repeat)
        rows.append({"name": name, "seconds": t, "copies": t / copy_s})
    rows.append({"name": f"(one copy of the {x.nbytes / 2**20:.0f} MB map)", "seconds": copy_s, "copies": 1.0})
    return rows


def per_offset_im2col(xt, kh: int, kw: int, stride: int, Ho: int, Wo: int):
    """The other layout: kh*kw strided copies, one per kernel offset (the op's code before it
    switched to one copy of a strided window view)."""
    C, n = xt.shape[0], xt.shape[1]
    cols = np.empty((C, kh, kw, n, Ho, Wo), dtype=xt.dtype)
    hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    for p in range(kh):
        for q in range(kw):
            cols[:, p, q] = xt[:, :, p : p + hs : stride, q : q + ws : stride]
    return cols.reshape(C * kh * kw, n * Ho * Wo)


def bench_im2col(N: int, C: int, size: int, repeat: int) -> dict:
    """Seconds to build the (C*9, N*H*W) columns: per-offset copies vs the op's one strided-view copy."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, C, size, size), dtype=np.float32)
    xt = conv_module._pad_channel_major(x, 1)
    return {
        "name": f"im2col {C} ch at {size}x{size} batch {N}",
        "loop_s": best_time(lambda: per_offset_im2col(xt, 3, 3, 1, size, size), repeat),
        "strided_view_s": best_time(lambda: conv_module._im2col(xt, 3, 3, 1, size, size), repeat),
    }


def bench_im2col_in_conv(N: int, layers, repeat: int) -> list[dict]:
    """A whole conv forward + backward with either im2col, interleaved (median of ``repeat``); also
    checks that both give the same numbers bit for bit."""
    rng = np.random.default_rng(4)
    rows = []
    ops = conv_module._im2col
    for C, F, size in layers:
        x = rng.standard_normal((N, C, size, size), dtype=np.float32)
        W = rng.standard_normal((F, C, 3, 3), dtype=np.float32) * 0.01
        b = np.zeros(F, np.float32)
        times = {"per_offset": [], "strided_view": []}
        results = {}
        try:
            for rep in range(repeat + 1):  # the first round warms up
                for name, fn in (("per_offset", per_offset_im2col), ("strided_view", ops)):
                    conv_module._im2col = fn
                    t0 = time.perf_counter()
                    a, cache = conv_module.conv2d_forward(x, W, b, 1, 1)
                    grads = conv_module.conv2d_backward(np.ones_like(a), cache)
                    if rep:
                        times[name].append(time.perf_counter() - t0)
                    results[name] = (a, *grads)
        finally:
            conv_module._im2col = ops
        same = all(np.array_equal(p, q) for p, q in zip(results["per_offset"], results["strided_view"]))
        rows.append({"name": f"conv {C}->{F} at {size}x{size}", "same": same,
                     **{k: float(np.median(v)) for k, v in times.items()}})
    return rows


def _conv_step(x, W, dout, algorithm, need_dx):
    out, cache = conv_module.conv2d_forward(x, W, None, 1, 1, algorithm)
    conv_module.conv2d_backward(dout, cache, need_dx=need_dx)
    return out


# 3x3 convolutions (C, F, size) of the paper's nets: vgg8b on 32x32x3 and 28x28x1 (its first convs by 3 and 1
# channels, its last maps of 4x4 and 3x3), at --feat-mult 0.25 (32..128 channels), and vgg11b's 2x2 maps
CONV_SHAPES = [(3, 128, 32), (128, 256, 32), (256, 256, 16), (256, 512, 16), (512, 512, 8), (512, 512, 4),
               (1, 128, 28), (128, 256, 28), (256, 256, 14), (512, 512, 7), (512, 512, 3), (512, 512, 2),
               (1, 32, 28), (32, 64, 28), (64, 64, 14), (64, 128, 14), (128, 128, 7), (128, 128, 3),
               (8, 16, 14), (16, 16, 7)]


def bench_conv_algorithms(N: int, layers, repeat: int) -> list[dict]:
    """3x3 convolutions by im2col and by Winograd F(4x4, 3x3) through ``conv2d_forward`` (chunked as runs
    chunk them), forward + backward with dx and with dW only (a local rule's encoder), interleaved,
    median of ``repeat``; each one's largest float32 error against the float64 convolution; and which
    of the two "auto" takes on the CPU (ops.conv.AUTO_RULES)."""
    rng = np.random.default_rng(6)
    rows = []
    for C, F, size in layers:
        x64 = rng.standard_normal((N, C, size, size))
        W64 = rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)
        x, W = x64.astype(np.float32), W64.astype(np.float32)
        dout = np.ones((N, F, size, size), np.float32)
        ref = conv_module.conv2d_forward(x64, W64, None, 1, 1, "im2col")[0]
        sides = {f"{a}{'' if dx else '_dW'}": functools.partial(_conv_step, x, W, dout, a, dx)
                 for a in ("im2col", "winograd") for dx in (True, False)}
        times = {k: [] for k in sides}
        errors = {}
        for rep in range(repeat + 1):  # the first round warms up
            names = list(sides)[rep % len(sides):] + list(sides)[:rep % len(sides)]
            for name in names:
                t0 = time.perf_counter()
                out = sides[name]()
                if rep:
                    times[name].append(time.perf_counter() - t0)
                errors[name.split("_")[0]] = float(np.abs(out - ref).max() / np.abs(ref).max())
        auto = conv_module.uses_winograd(np, x.shape, W.shape, 1, 1, "auto")
        rows.append({"name": f"conv {C}->{F} at {size}x{size}", "C": C, "F": F, "size": size,
                     **{f"{k}_s": float(np.median(v)) for k, v in times.items()},
                     **{f"{k}_error": v for k, v in errors.items()}, "auto": "winograd" if auto else "im2col"})
    return rows


def print_conv_algorithms(rows: list[dict]) -> None:
    print(f"{'3x3 conv, forward + backward, median ms':40s} {'im2col':>8s} {'winograd':>8s} {'gain':>6s} "
          f"{'dW only: im2col':>15s} {'winograd':>8s} {'gain':>6s}  auto      float32 error: im2col, winograd")
    for r in rows:
        print(f"{r['name']:40s} {1e3 * r['im2col_s']:8.1f} {1e3 * r['winograd_s']:8.1f} "
              f"{r['im2col_s'] / r['winograd_s']:5.2f}x {1e3 * r['im2col_dW_s']:15.1f} {1e3 * r['winograd_dW_s']:8.1f} "
              f"{r['im2col_dW_s'] / r['winograd_dW_s']:5.2f}x  {r['auto']:9s} {r['im2col_error']:.1e}, "
              f"{r['winograd_error']:.1e}")
    print(f"gain = im2col / winograd (F(4x4, 3x3) in chunks, as runs use it); auto: what --conv-algorithm auto "
          f"takes on the CPU ({conv_module.AUTO['cpu']}: {conv_module.AUTO_RULES[conv_module.AUTO['cpu']]})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=machine.NOTE)
    ap.add_argument("--quick", action="store_true", help="batch 32 and a 1024^3 GEMM, for a smoke run")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions; the best is reported")
    ap.add_argument("--json", type=machine.json_path, help="also write the results to this new JSON file")
    ap.add_argument("--conv-algorithms", action="store_true",
                    help="only the 3x3 convolutions by im2col and by Winograd, at the paper's layer shapes")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads (threadpoolctl) and bioplaus's own (default: numpy's, the cores)")
    args = ap.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads, user_api="blas")
        set_cpu_threads(args.threads)  # bioplaus's own passes and convolution chunks too, as a run's --threads
    facts = machine.print_header()
    N = 32 if args.quick else 128
    repeat = 1 if args.quick else max(1, args.repeat)
    if args.conv_algorithms:
        algorithms = bench_conv_algorithms(N, [(16, 32, 16)] if args.quick else CONV_SHAPES, repeat)
        print_conv_algorithms(algorithms)
        if args.json:
            machine.write_json(args.json, {"machine": facts, "batch": N, "conv_algorithms": algorithms})
            print(f"wrote {args.json}")
        return 0

    n = 1024 if args.quick else 2048
    gemm = matmul_rate(n, repeat)
    benches = [
        lambda k: bench_dense(N, 1024, k),
        lambda k: bench_conv(N, 128, 256, 28, k),
        lambda k: bench_conv(N, 512, 512, 4, k),
        lambda k: bench_conv(N, 3, 128, 32, k, need_dx=False),
        lambda k: bench_conv(N, 3, 128, 32, k),
    ]
    rows = [with_neighbour_rate(b, n, repeat) for b in benches]
    for r in rows:
        r["gflops"] = r["gflop"] / r["seconds"]
        r["pct_of_matmul"] = 100 * r["gflops"] / r["matmul_gflops"]
    im2col = bench_im2col(N, 128, 28, repeat)
    conv_layers = [(16, 32, 16)] if args.quick else [(3, 128, 32), (128, 256, 32), (256, 256, 16), (256, 512, 16),
                                                      (512, 512, 8), (512, 512, 4)]
    im2col_in_conv = bench_im2col_in_conv(N, conv_layers, repeat)
    algorithms = bench_conv_algorithms(N, [(16, 32, 16)] if args.quick else CONV_SHAPES, repeat)
    memory_bound = bench_memory_bound(N, repeat)

    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")}
    print(f"env: {env}")
    print(f"float32 matmul ({'1024' if args.quick else '2048'}^3, best of {repeat}): {gemm:8.1f} GFLOP/s")
    print(
        f"{'op (forward + backward)':42s} {'GFLOP':>7s} {'ms':>8s} {'GFLOP/s':>8s} {'mm GF/s':>8s} {'% mm':>6s} "
        f"{'peak MB':>8s}"
    )
    for r in rows:
        peak = f"{r['peak_mb']:8.0f}" if "peak_mb" in r else f"{'':8s}"
        print(
            f"{r['name']:42s} {r['gflop']:7.2f} {1e3 * r['seconds']:8.1f} {r['gflops']:8.1f} {r['matmul_gflops']:8.1f} "
            f"{r['pct_of_matmul']:5.0f}% {peak}"
        )
    print(
        f"{im2col['name']}: per-offset copies {1e3 * im2col['loop_s']:.1f} ms, "
        f"one copy of a strided view (the op) {1e3 * im2col['strided_view_s']:.1f} ms"
    )
    print(f"{'conv forward + backward, median':42s} {'per-offset ms':>14s} {'the op ms':>10s} {'ratio':>6s}  same numbers")
    for r in im2col_in_conv:
        print(f"{r['name']:42s} {1e3 * r['per_offset']:14.1f} {1e3 * r['strided_view']:10.1f} "
              f"{r['strided_view'] / r['per_offset']:6.2f}  {'yes' if r['same'] else 'NO'}")
    print(f"im2col buffer limit: {conv_module.IM2COL_MAX_BYTES / 2**20:.0f} MB per chunk")
    print_conv_algorithms(algorithms)
    print(f"{'memory-bound op (forward + backward)':42s} {'ms':>8s} {'x copy':>7s}")
    for r in memory_bound:
        print(f"{r['name']:42s} {1e3 * r['seconds']:8.1f} {r['copies']:7.1f}")
    if args.json:
        machine.write_json(args.json, {"matmul_gflops": gemm, "env": env, "machine": facts, "batch": N, "ops": rows,
                                       "im2col": im2col, "im2col_in_conv": im2col_in_conv,
                                       "memory_bound": memory_bound, "conv_algorithms": algorithms})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
