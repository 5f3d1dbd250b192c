"""Training-step time and memory on a GPU: bioplaus (CuPy) against the PyTorch twin (CUDA, cuDNN).

{mlp 3x1024, vgg8b, vgg11b} on 3x32x32, batch 128, {glob, predsim, predsim-bpf}, float32; A/B
interleaved after a warm-up, medians, one ratio per pair; each side's GPU memory peak during a step
(ours: the high-water mark of CuPy's pool in use, tracked by an allocator hook; the twin's:
``torch.cuda.max_memory_allocated``); the projected wall time of the paper's CIFAR-10 vgg8b recipe
(400 epochs of 50,000 images) from the measured step time. Prints one table. For the VGGs a third
side runs our step with the device's 3x3 convolutions by im2col + one GEMM instead of Winograd's
F(4x4, 3x3) (``--conv-algorithm im2col``), interleaved with the other two: the column ``im2col ms``.

Like with like: PyTorch runs cuDNN convolutions and matmuls in TF32 by default and CuPy does not, so
both sides run true float32 here (``torch.backends.*.allow_tf32 = False``); ``--tf32`` lets both use
TF32 instead (``CUPY_TF32=1`` must then be set before CuPy is imported: this script does it).

``--profile``: where our step's time goes, per op (each op timed between two device syncs, so the
sum is a little above the free-running step), for the listed cases. ``--profile-conv``: one conv's
forward and backward by im2col, by Winograd (F(2x2) and F(4x4)) and by cuDNN, and im2col's parts.

    python3 sims/benchmarks/bench_gpu.py --json gpu.json --profile vgg8b:predsim   # on the GPU machine
    python3 sims/benchmarks/bench_gpu.py --device cpu --small                      # a dry run on a CPU

The header prints the CPU's BLAS too, on a GPU as well (the host side and ``--device cpu`` use it).

BLAS kernels: benchmarks are run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset in the
benchmark's command alone (they force older OpenBLAS kernels; a user's machine has no such override):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python sims/benchmarks/bench_gpu.py ...

Tests and CI leave the variables as they are. The header prints the machine, numpy and its BLAS
(library, version, kernel, threads), and a WARNING line when either variable is set (``machine.py``).
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import statistics
import sys
import time
from pathlib import Path

if "--tf32" in sys.argv:
    os.environ["CUPY_TF32"] = "1"  # read by CuPy at import

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import machine
from bench_train import LR, bioplaus_step, case_config, in_turn, step_flops

from bioplaus.backend import get_backend
from bioplaus.blocks import LEAKY_SLOPE
from bioplaus.models import build_spec
from bioplaus.ops import conv, winograd

BATCH = 128
SHAPE = (3, 32, 32)
CIFAR10_STEPS_PER_EPOCH = math.ceil(50_000 / BATCH)
RECIPE_EPOCHS = 400


def theirs(device, cfg, spec, x, y, tf32: bool):
    import torch
    from torch_twin import TorchTwin

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.manual_seed(cfg.seed)
    slope = LEAKY_SLOPE if cfg.nonlin == "leakyrelu" else 0.0
    twin = TorchTwin(spec, cfg.variant, cfg.beta, cfg.dropout, slope, cfg.target_proj_size, LR)
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    twin.blocks.to(dev)
    twin.out.to(dev)
    for opts in [twin.opts] + ([[twin.opt_out]] if hasattr(twin, "opt_out") else []):
        for opt in opts:  # the optimizers were made before the move: their params are the moved ones
            assert all(p.device.type == dev.type for g in opt.param_groups for p in g["params"])
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y.astype(np.int64)).to(dev)

    def step():
        loss = twin.step(xt, yt)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return loss

    def peak_bytes() -> int | None:
        if dev.type != "cuda":
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        return int(torch.cuda.max_memory_allocated())

    step.peak_bytes = peak_bytes
    return step


def our_peak_bytes(backend, step) -> int | None:
    """Bytes of CuPy's pool in use at the highest point of one step (parameters and states included)."""
    if not backend.is_gpu:
        return None
    cupy = backend.xp
    pool = cupy.get_default_memory_pool()
    peak = [pool.used_bytes()]

    def malloc(size):
        mem = pool.malloc(size)
        peak[0] = max(peak[0], pool.used_bytes())
        return mem

    backend.synchronize()
    cupy.cuda.set_allocator(malloc)
    try:
        step()
    finally:
        cupy.cuda.set_allocator(pool.malloc)
    return peak[0]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _config(model, variant, small):
    cfg = case_config(model, variant)
    if small:
        cfg = cfg.replace(num_hidden=128) if model == "mlp" else cfg.replace(feat_mult=0.125, num_hidden=128)
    return cfg


def bench(device, model, variant, repeat, warmup, small, tf32) -> dict:
    cfg = _config(model, variant, small)
    spec = build_spec(cfg, SHAPE, 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *SHAPE), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    backend = get_backend(device)
    a, b = bioplaus_step(cfg, spec, x, y, backend), theirs(device, cfg, spec, x, y, tf32)
    sides = [(a, []), (b, [])]
    if model != "mlp" and backend.is_gpu:  # ours again, its convolutions by im2col
        im2col_cfg = cfg.replace(conv_algorithm="im2col")
        sides.append((bioplaus_step(im2col_cfg, build_spec(im2col_cfg, SHAPE, 10), x, y, backend), []))
    for _ in range(warmup):
        for fn, _acc in sides:
            fn()
    for r in range(repeat):
        for fn, acc in in_turn(sides, r):
            acc.append(timed(fn))
    sa, sb = statistics.median(sides[0][1]), statistics.median(sides[1][1])
    s_im2col = statistics.median(sides[2][1]) if len(sides) > 2 else None
    flop = step_flops(spec, variant, BATCH, cfg.target_proj_size)
    return {"model": model, "input": "x".join(map(str, SHAPE)), "variant": variant, "device": device,
            "batch": BATCH, "tf32": tf32, "repeat": repeat, "gflop_per_step": flop / 1e9,
            "bioplaus_ms": 1e3 * sa, "torch_ms": 1e3 * sb,
            "bioplaus_im2col_ms": None if s_im2col is None else 1e3 * s_im2col,
            "bioplaus_samples_per_s": BATCH / sa, "torch_samples_per_s": BATCH / sb, "ratio": sb / sa,
            "bioplaus_tflops": flop / sa / 1e12, "torch_tflops": flop / sb / 1e12,
            "bioplaus_peak_mb": _mb(our_peak_bytes(backend, a)), "torch_peak_mb": _mb(b.peak_bytes()),
            "recipe_hours_projected": (RECIPE_EPOCHS * CIFAR10_STEPS_PER_EPOCH * sa / 3600
                                       if model == "vgg8b" else None)}


def _mb(n):
    return None if n is None else n / 2**20


def profile(device, model, variant, small, steps: int = 3) -> list[tuple[str, float, int]]:
    """(op, ms per step, calls per step), largest first, plus 'step (synced per op)' and 'other'."""
    from bioplaus import ops as ops_module
    from bioplaus.optim import Adam

    cfg = _config(model, variant, small)
    spec = build_spec(cfg, SHAPE, 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *SHAPE), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    backend = get_backend(device)
    step = bioplaus_step(cfg, spec, x, y, backend)
    step()
    totals: dict = collections.defaultdict(float)
    calls: dict = collections.defaultdict(int)
    patched = []

    def wrap(owner, name, label):
        fn = getattr(owner, name)

        def timed_op(*args, **kwargs):
            backend.synchronize()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            backend.synchronize()
            totals[label] += time.perf_counter() - t0
            calls[label] += 1
            return out

        setattr(owner, name, timed_op)
        patched.append((owner, name, fn))

    extra = ("softmax_cross_entropy", "mse", "sigmoid_bce_with_logits", "label_similarity", "count_correct",
             "dropout_mask")
    for name in dir(ops_module):
        if (name.endswith(("_forward", "_backward")) or name in extra) and callable(getattr(ops_module, name)):
            wrap(ops_module, name, name)
    wrap(Adam, "step", "adam")
    try:
        t = [timed(step) for _ in range(steps)]
    finally:
        for owner, name, fn in patched:
            setattr(owner, name, fn)
    total = statistics.median(t)
    rows = sorted(((k, 1e3 * v / steps, calls[k] // steps) for k, v in totals.items()), key=lambda r: -r[1])
    other = 1e3 * total - sum(r[1] for r in rows)
    return [("step (synced per op)", 1e3 * total, 0), *rows, ("other (between ops)", other, 0)]


def profile_conv(device, N=128, C=128, F=256, size=32, repeat=10) -> list[tuple[str, float]]:
    """The parts of one 3x3 pad-1 convolution (vgg8b's conv2 shape by default), forward and the
    backward of a local rule's encoder (dW only) and of a sim head (dW and dx), by im2col and by
    Winograd, against cuDNN's."""
    backend = get_backend(device)
    xp = backend.xp
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((N, C, size, size), dtype=np.float32))
    W = backend.asarray(rng.standard_normal((F, C, 3, 3), dtype=np.float32) * 0.05)
    W2 = W.reshape(F, -1)
    dout = backend.asarray(rng.standard_normal((N, F, size, size), dtype=np.float32))

    def clock(fn):
        fn()
        backend.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        backend.synchronize()
        return 1e3 * (time.perf_counter() - t0) / repeat

    xt = conv._pad_channel_major(x, 1)
    cols = conv._im2col(xt, 3, 3, 1, size, size)
    a2 = W2 @ cols
    d2 = dout.transpose(1, 0, 2, 3).reshape(F, -1)
    dxt = xp.zeros_like(xt)
    cache = conv.conv2d_forward(x, W, None, 1, 1, "im2col")[1]
    wino = {m: winograd.winograd_conv3x3_forward(x, W, 1, m)[1] for m in winograd.TILES}
    rows = [
        ("pad + channel-major copy", clock(lambda: conv._pad_channel_major(x, 1))),
        ("im2col", clock(lambda: conv._im2col(xt, 3, 3, 1, size, size))),
        ("forward GEMM W2 @ cols", clock(lambda: W2 @ cols)),
        ("output transpose", clock(lambda: xp.ascontiguousarray(a2.reshape(F, N, size, size).transpose(1, 0, 2, 3)))),
        ("dout transpose", clock(lambda: xp.ascontiguousarray(dout.transpose(1, 0, 2, 3)))),
        ("dW GEMM d2 @ cols.T", clock(lambda: d2 @ cols.T)),
        ("dcols GEMM W2.T @ d2", clock(lambda: W2.T @ d2)),
        ("col2im", clock(lambda: conv._col2im_add(dxt, cols, 3, 3, 1, size, size))),
        ("conv2d_forward (im2col)", clock(lambda: conv.conv2d_forward(x, W, None, 1, 1, "im2col"))),
        ("conv2d_backward, dW only", clock(lambda: conv.conv2d_backward(dout, cache, need_dx=False))),
        ("conv2d_backward, dW and dx", clock(lambda: conv.conv2d_backward(dout, cache, need_dx=True))),
    ]
    for m in winograd.TILES:
        rows += [
            (f"winograd F({m}x{m}) forward", clock(lambda m=m: winograd.winograd_conv3x3_forward(x, W, 1, m))),
            (f"winograd F({m}x{m}) dW only", clock(
                lambda m=m: winograd.winograd_conv3x3_backward(dout, wino[m], need_dx=False))),
            (f"winograd F({m}x{m}) dW and dx", clock(lambda m=m: winograd.winograd_conv3x3_backward(dout, wino[m]))),
        ]
    if device == "gpu":
        import torch

        tx = torch.from_numpy(backend.to_host(x)).cuda().requires_grad_(False)
        tW = torch.from_numpy(backend.to_host(W)).cuda().requires_grad_(True)
        td = torch.from_numpy(backend.to_host(dout)).cuda()

        def tclock(fn):
            fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn()
            torch.cuda.synchronize()
            return 1e3 * (time.perf_counter() - t0) / repeat

        import torch.nn.functional as F_

        rows.append(("cuDNN forward", tclock(lambda: F_.conv2d(tx, tW, None, 1, 1))))
        rows.append(("cuDNN dW only", tclock(
            lambda: torch.nn.grad.conv2d_weight(tx, tW.shape, td, 1, 1))))
        rows.append(("cuDNN dx only", tclock(
            lambda: torch.nn.grad.conv2d_input(tx.shape, tW.detach(), td, 1, 1))))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=machine.NOTE)
    p.add_argument("--device", default="gpu", choices=("gpu", "cpu"))
    p.add_argument("--models", default="mlp,vgg8b,vgg11b")
    p.add_argument("--variants", default="glob,predsim,predsim-bpf")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tf32", action="store_true", help="both sides may use TF32 (default: true float32 on both)")
    p.add_argument("--small", action="store_true", help="channels / 8: a quick dry run of the script")
    p.add_argument("--profile", default="", help="comma-separated model:variant cases to profile per op")
    p.add_argument("--profile-conv", action="store_true", help="time the parts of one vgg8b conv against cuDNN")
    p.add_argument("--json", type=machine.json_path, help="write the rows to this new file")
    args = p.parse_args(argv)
    facts = machine.print_header()  # the CPU's BLAS, on a GPU too
    backend = get_backend(args.device)
    import torch

    head = f"device: {backend.device}, batch {BATCH}, {'x'.join(map(str, SHAPE))}, float32" + \
        (", TF32 allowed on both sides" if args.tf32 else ", TF32 off on both sides") + \
        (" (--small: channels / 8)" if args.small else "")
    if backend.is_gpu:
        head += f"; CuPy {backend.xp.__version__}, CUDA runtime {backend.xp.cuda.runtime.runtimeGetVersion()}"
    head += f"; torch {torch.__version__}"
    print(head, flush=True)
    rows = []
    for m in args.models.split(","):
        for v in args.variants.split(","):
            try:
                rows.append(bench(args.device, m, v, args.repeat, args.warmup, args.small, args.tf32))
            except Exception as exc:  # noqa: BLE001 -- one broken case must not hide the others' numbers
                print(f"{m} {v}: FAILED: {type(exc).__name__}: {exc}", flush=True)
                rows.append({"model": m, "variant": v, "error": f"{type(exc).__name__}: {exc}"})
                continue
            r = rows[-1]
            print(f"  done {m} {v}: ours {r['bioplaus_ms']:.1f} ms, torch {r['torch_ms']:.1f} ms", flush=True)
    print(f"{'model':7s} {'variant':12s} {'GFLOP':>6s} {'ours ms':>8s} {'im2col ms':>9s} {'torch ms':>8s} "
          f"{'ours/s':>7s} {'torch/s':>7s} "
          f"{'ratio':>6s} {'TFLOP/s':>7s} {'ours MB':>8s} {'torch MB':>8s} {'vgg8b recipe':>12s}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:7s} {r['variant']:12s} FAILED: {r['error'][:80]}")
            continue
        hours = f"{r['recipe_hours_projected']:.1f} h" if r["recipe_hours_projected"] is not None else "-"
        mb = lambda v: f"{v:8.0f}" if v is not None else f"{'-':>8s}"
        im2col = f"{r['bioplaus_im2col_ms']:9.2f}" if r["bioplaus_im2col_ms"] is not None else f"{'-':>9s}"
        print(f"{r['model']:7s} {r['variant']:12s} {r['gflop_per_step']:6.1f} {r['bioplaus_ms']:8.2f} {im2col} "
              f"{r['torch_ms']:8.2f} {r['bioplaus_samples_per_s']:7.0f} {r['torch_samples_per_s']:7.0f} "
              f"{r['ratio']:5.2f}x {r['bioplaus_tflops']:7.2f} {mb(r['bioplaus_peak_mb'])} {mb(r['torch_peak_mb'])} "
              f"{hours:>12s}")
    print("ours: 3x3 convs by Winograd F(4x4) on a GPU; im2col ms: ours with them by im2col + GEMM, interleaved")
    print("ratio = bioplaus samples/s / torch samples/s (>1: bioplaus faster); MB = GPU memory peak during a step; "
          f"recipe = 400 epochs x {CIFAR10_STEPS_PER_EPOCH} steps at our step time", flush=True)
    for case in filter(None, args.profile.split(",")):
        m, v = case.split(":")
        print(f"\nprofile of our {m} {v} step (ms per step, calls per step):")
        try:
            for name, ms, n in profile(args.device, m, v, args.small):
                print(f"  {name:28s} {ms:8.2f} {n:5d}")
        except Exception as exc:  # noqa: BLE001
            print(f"  FAILED: {type(exc).__name__}: {exc}")
    if args.profile_conv:
        print("\nparts of one 3x3 convolution, 128x128x32x32 -> 256 channels, float32 (ms):" if not args.small
              else "\nparts of one 3x3 convolution, 128x16x32x32 -> 32 channels (--small), float32 (ms):")
        try:
            for name, ms in profile_conv(args.device, **({"C": 16, "F": 32} if args.small else {})):
                print(f"  {name:28s} {ms:8.2f}")
        except Exception as exc:  # noqa: BLE001
            print(f"  FAILED: {type(exc).__name__}: {exc}")
    if args.json:
        for r in rows:
            r["machine"] = facts
        machine.write_json(args.json, rows, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
