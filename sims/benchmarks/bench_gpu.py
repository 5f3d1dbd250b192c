"""Training-step time on a GPU: bioplaus (CuPy) against the PyTorch twin (CUDA, cuDNN on).

vgg8b and vgg11b at 32x32x3, batch 128, {glob, predsim, predsim-bpf}, float32; A/B interleaved,
warm-up, medians, one ratio per pair; plus the projected wall time of the paper's CIFAR-10 vgg8b
recipe (400 epochs of 50,000 images) from the measured step time. Prints one table.

    python sims/benchmarks/bench_gpu.py --json gpu.json          # on the GPU machine
    python sims/benchmarks/bench_gpu.py --device cpu --small     # a dry run of the script on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from bench_train import LR, bioplaus_step, case_config

from bioplaus.backend import get_backend
from bioplaus.blocks import LEAKY_SLOPE
from bioplaus.models import build_spec

BATCH = 128
CIFAR10_STEPS_PER_EPOCH = math.ceil(50_000 / BATCH)
RECIPE_EPOCHS = 400


def theirs(device, cfg, spec, x, y):
    import torch
    from torch_twin import TorchTwin

    torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    slope = LEAKY_SLOPE if cfg.nonlin == "leakyrelu" else 0.0
    twin = TorchTwin(spec, cfg.variant, cfg.beta, cfg.dropout, slope, cfg.target_proj_size, LR)
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    twin.blocks.to(dev)
    twin.out.to(dev)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y.astype(np.int64)).to(dev)

    def step():
        loss = twin.step(xt, yt)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return loss

    return step


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(device, model, variant, repeat, warmup, small) -> dict:
    cfg = case_config(model, variant)
    if small:
        cfg = cfg.replace(feat_mult=0.125, num_hidden=128)
    spec = build_spec(cfg, (3, 32, 32), 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    a, b = bioplaus_step(cfg, spec, x, y, get_backend(device)), theirs(device, cfg, spec, x, y)
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for r in range(repeat):
        pair = [(a, ta), (b, tb)]
        for fn, acc in pair if r % 2 == 0 else pair[::-1]:
            acc.append(timed(fn))
    sa, sb = statistics.median(ta), statistics.median(tb)
    return {"model": model, "variant": variant, "device": device, "bioplaus_ms": 1e3 * sa, "torch_ms": 1e3 * sb,
            "bioplaus_samples_per_s": BATCH / sa, "torch_samples_per_s": BATCH / sb, "ratio": sb / sa,
            "recipe_hours_projected": (RECIPE_EPOCHS * CIFAR10_STEPS_PER_EPOCH * sa / 3600
                                       if model == "vgg8b" else None)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="gpu", choices=("gpu", "cpu"))
    p.add_argument("--models", default="vgg8b,vgg11b")
    p.add_argument("--variants", default="glob,predsim,predsim-bpf")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--small", action="store_true", help="channels / 8: a quick dry run of the script")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    rows = [bench(args.device, m, v, args.repeat, args.warmup, args.small)
            for m in args.models.split(",") for v in args.variants.split(",")]
    head = f"{'model':8s} {'variant':12s} {'bioplaus ms':>11s} {'torch ms':>9s} {'ratio':>6s} {'vgg8b recipe':>13s}"
    print(f"device: {get_backend(args.device).device}, batch {BATCH}, 3x32x32, float32"
          + (" (--small: channels / 8)" if args.small else ""))
    print(head)
    for r in rows:
        hours = f"{r['recipe_hours_projected']:.1f} h" if r["recipe_hours_projected"] is not None else "-"
        print(f"{r['model']:8s} {r['variant']:12s} {r['bioplaus_ms']:11.1f} {r['torch_ms']:9.1f} "
              f"{r['ratio']:5.2f}x {hours:>13s}")
    print("ratio = bioplaus samples/s / torch samples/s (>1: bioplaus faster); recipe = 400 epochs x "
          f"{CIFAR10_STEPS_PER_EPOCH} steps at the measured step time")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
