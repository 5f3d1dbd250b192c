"""Where a CPU training step's time goes, per op, at 1 thread and at N: which parts gain from more cores.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python sims/benchmarks/profile_step.py [--model vgg8b] [--input 1x28x28] [--variant predsim-bpf] \\
                                               [--threads 1 2] [--repeat 5] [--top 16]

The step is ``bench_train.py``'s (the engine's own ``Stage.train_step``, batch 128, float32, the paper's
vgg8b setting, ``--conv-algorithm auto``). Every function of ``bioplaus.ops`` that the engine calls, and
the optimizer's update, is wrapped by a timer that records its *exclusive* wall time (time inside it
minus time inside the wrapped ops it calls), so the rows add up to the step; "(not in an op)" is the
rest (the rule's and the kinds' own glue). For each thread count the steps are timed after one warm-up
step, the thread counts in turn (interleaved); the table shows, per op, the median milliseconds per step
at each count and the gain from the extra threads (ms at the first count / ms at the last). An op that
keeps a gain near 1.0 while the step's is higher is a pass that runs on one core.

The wrappers cost a few microseconds a call (a step makes a few hundred calls); the total is shown next
to the unwrapped step's time measured in the same run. Not part of CI; prints a table.

``--twin`` adds a second table: the same step by part (convolution, batch norm + φ, pooling, dropout,
dense, Adam, and the losses with the rest) for ours and for ``bench_train.py``'s PyTorch twin side by
side, at each thread count, so that a step slower than the twin's shows which part is. The twin's parts
come from ``torch.profiler``: every aten op's self time goes to the part of its nearest enclosing op that
names one (``aten::conv2d``, ``ConvolutionBackward0``, ``Optimizer.step``, ...); element-wise ops that no
such op encloses (the similarity's arithmetic, the losses' scaling, dropout's mask in the backward:
PyTorch records them as plain ``aten::mul``) land in the last row, with the losses. Ours are grouped by
the ``bioplaus.ops`` module of each op. The parts are therefore close, not exact: compare the large rows.
The profiler costs the twin time on small ops (an mlp's step most); its unprofiled step is shown too.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench_train before NumPy: it sets OpenBLAS's waiting policy, which OpenBLAS reads when NumPy loads it
import bench_train
import machine
import numpy as np

from bioplaus.backend import keep_freed_memory, set_cpu_threads
from bioplaus.models import build_spec

_totals: dict = defaultdict(float)  # op name -> exclusive seconds, of the calling thread
_stack: list = []  # children's seconds of each open call
_MAIN = threading.main_thread()


def _timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is not _MAIN:  # inside a pass split among threads: counted by its caller
            return fn(*args, **kwargs)
        _stack.append(0.0)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.perf_counter() - t0
            children = _stack.pop()
            _totals[name] += spent - children
            if _stack:
                _stack[-1] += spent
    return wrapper


_swaps: list = []  # (module, attribute, original, wrapper)


def wrap_ops() -> int:
    """Find every bioplaus.ops function, wherever a bioplaus module holds it, and make its timed wrapper;
    :func:`use_wrappers` puts them in place or takes them out."""
    import bioplaus.ops  # noqa: F401  (loads every op module)

    wrapped = {}
    for mod_name, mod in list(sys.modules.items()):
        if not mod_name.startswith("bioplaus") or mod is None:
            continue
        for attr, value in list(vars(mod).items()):
            owner = getattr(value, "__module__", "") or ""
            if callable(value) and not isinstance(value, type) and owner.startswith("bioplaus.ops") \
                    and not attr.startswith("__"):
                key = (owner, value.__name__)
                if key not in wrapped:
                    wrapped[key] = _timed(f"{owner.removeprefix('bioplaus.ops.')}.{value.__name__}", value)
                _swaps.append((mod, attr, value, wrapped[key]))
    return len(wrapped)


def use_wrappers(on: bool) -> None:
    for mod, attr, original, wrapper in _swaps:
        setattr(mod, attr, wrapper if on else original)


# the parts of a step (--twin): ours by the module of bioplaus.ops an op is in
REST = "losses and the rest"
PARTS = ("convolution", "batch norm + φ", "pooling", "dropout", "dense", "Adam", REST)
OUR_PARTS = {"winograd": "convolution", "conv": "convolution", "bn_act": "batch norm + φ",
             "batchnorm": "batch norm + φ", "activation": "batch norm + φ", "pool": "pooling", "dropout": "dropout",
             "dense": "dense", "optim": "Adam"}
# the twin's by words in the name of an aten op or of an enclosing one (autograd nodes, the optimizer)
TWIN_PARTS = (("convolution", ("conv",)), ("batch norm + φ", ("batch_norm", "batchnorm", "relu", "threshold")),
              ("pooling", ("pool",)), ("dropout", ("dropout", "bernoulli")), ("dense", ("linear", "addmm")),
              ("Adam", ("optimizer", "adam", "_foreach", "zero_grad")))


def our_part(op: str) -> str:
    return OUR_PARTS.get(op.split(".")[0], REST)


def twin_part(event) -> str:
    """The part of a profiled PyTorch op: of itself or of the nearest enclosing op whose name says one."""
    while event is not None:
        name = event.name.lower()
        for part, words in TWIN_PARTS:
            if any(w in name for w in words):
                return part
        event = event.cpu_parent
    return REST


def profile_twin(twin_step) -> dict:
    """One profiled step of the twin: ms per part (self times)."""
    from torch.profiler import ProfilerActivity, profile

    parts: dict = defaultdict(float)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        twin_step()
    for event in prof.events():
        parts[twin_part(event)] += event.self_cpu_time_total / 1e3
    return parts


def print_parts(threads: list, ours: dict, twin: dict, ours_step: dict, twin_step: dict) -> None:
    """ours/twin: thread count -> part -> list of ms per step; *_step: thread count -> list of unwrapped ms."""
    med = statistics.median
    head = "".join(f"{f'ours @{t}':>10s}{f'twin @{t}':>10s}{'twin/ours':>10s}" for t in threads)
    print(f"\n{'part of the step (ms)':24s}{head}")
    for part in PARTS:
        row = ""
        for t in threads:
            o, w = med(ours[t].get(part, [0.0])), med(twin[t].get(part, [0.0]))
            row += f"{o:10.1f}{w:10.1f}" + (f"{w / o:10.2f}" if o > 0.05 else f"{'':10s}")
        print(f"{part:24s}{row}")
    for label, o_series, w_series in (("step, profiled", ours, twin), ("step, unprofiled", ours_step, twin_step)):
        row = ""
        for t in threads:
            if label == "step, profiled":
                o, w = (sum(med(v) for v in side[t].values()) for side in (o_series, w_series))
            else:
                o, w = med(o_series[t]), med(w_series[t])
            row += f"{o:10.1f}{w:10.1f}{w / o:10.2f}"
        print(f"{label:24s}{row}")
    print("twin/ours > 1: ours faster at that part. The twin's parts: torch.profiler self times, by the nearest "
          "enclosing op that names one (docstring)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vgg8b")
    ap.add_argument("--input", default="1x28x28")
    ap.add_argument("--variant", default="predsim-bpf")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--feat-mult", type=float, default=1.0, help="the vgg's channel multiplier")
    ap.add_argument("--dim-in-decoder", type=int, default=None, help="the pred heads' pooled input (default: "
                    "bench_train's 2048)")
    ap.add_argument("--dropout", type=float, default=None, help="default: bench_train's")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--top", type=int, default=16)
    ap.add_argument("--twin", action="store_true", help="also the step by part, ours beside the PyTorch twin's "
                    "(torch.profiler)")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    keep_freed_memory()  # as a run's process does (and bench_train)
    shape = tuple(int(v) for v in args.input.split("x"))
    cfg = bench_train.case_config(args.model, args.variant)
    changes = {k: v for k, v in (("feat_mult", args.feat_mult if args.model != "mlp" else 1.0),
                                 ("dim_in_decoder", args.dim_in_decoder), ("dropout", args.dropout)) if v is not None}
    cfg = cfg.replace(**changes)
    spec = build_spec(cfg, shape, 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((bench_train.BATCH, *shape), dtype=np.float32)
    y = rng.integers(0, 10, bench_train.BATCH)
    plain = bench_train.bioplaus_step(cfg, spec, x, y)  # the same step, run with the ops unwrapped
    twin = bench_train.torch_step(cfg, spec, x, y) if args.twin else None
    step = bench_train.bioplaus_step(cfg, spec, x, y)
    n_wrapped = wrap_ops()
    original_update = step.stage.update

    def update(i, grads):
        _stack.append(0.0)
        t0 = time.perf_counter()
        original_update(i, grads)
        spent = time.perf_counter() - t0
        _totals["optim.update (Adam)"] += spent - _stack.pop()

    step.stage.update = update
    facts = machine.print_header()
    print(f"{args.model} {args.input} {args.variant} (feat-mult {cfg.feat_mult:g}, decoder input {cfg.dim_in_decoder}, "
          f"dropout {cfg.dropout:g}), batch {bench_train.BATCH}: {n_wrapped} op functions timed")
    per: dict = {t: defaultdict(list) for t in args.threads}
    whole: dict = {t: [] for t in args.threads}
    bare: dict = {t: [] for t in args.threads}
    twin_per: dict = {t: defaultdict(list) for t in args.threads}
    twin_bare: dict = {t: [] for t in args.threads}

    def set_threads(t: int) -> None:
        set_cpu_threads(t)
        if twin is not None:
            import torch

            torch.set_num_threads(t)

    for t in args.threads:  # warm-up at every count (pools, caches)
        with threadpool_limits(limits=t, user_api="blas"):
            set_threads(t)
            use_wrappers(True)
            step()
            use_wrappers(False)
            plain()
            if twin is not None:
                twin()
    for r in range(args.repeat):
        for t in bench_train.in_turn(list(args.threads), r):
            with threadpool_limits(limits=t, user_api="blas"):
                set_threads(t)
                if twin is not None:
                    twin_bare[t].append(bench_train.timed(twin))
                    parts = profile_twin(twin)
                    for part in PARTS:
                        twin_per[t][part].append(parts.get(part, 0.0))
                use_wrappers(False)
                bare[t].append(bench_train.timed(plain))
                use_wrappers(True)
                _totals.clear()
                whole[t].append(bench_train.timed(step))
                for name, s in _totals.items():
                    per[t][name].append(s)
                per[t]["(not in an op)"].append(whole[t][-1] - sum(_totals.values()))
    lo, hi = args.threads[0], args.threads[-1]
    names = sorted(per[lo], key=lambda n: -statistics.median(per[lo][n]))
    head = "".join(f"{f'ms @{t}':>10s}" for t in args.threads)
    print(f"\n{'op (exclusive time)':44s}{head}{'gain':>8s}{'share @' + str(hi):>10s}")
    total_hi = statistics.median(whole[hi])
    shown = names[:args.top]
    for name in shown:
        ms = [1e3 * statistics.median(per[t][name]) for t in args.threads]
        gain = ms[0] / ms[-1] if ms[-1] > 0 else float("nan")
        print(f"{name:44s}" + "".join(f"{m:10.1f}" for m in ms) + f"{gain:8.2f}{100 * ms[-1] / 1e3 / total_hi:9.1f}%")
    rest = [1e3 * sum(statistics.median(per[t][n]) for n in names[args.top:]) for t in args.threads]
    print(f"{'(the other ' + str(len(names) - len(shown)) + ' ops)':44s}" + "".join(f"{m:10.1f}" for m in rest))
    for label, series in (("step, ops timed", whole), ("step, unwrapped (same run)", bare)):
        ms = [1e3 * statistics.median(series[t]) for t in args.threads]
        print(f"{label:44s}" + "".join(f"{m:10.1f}" for m in ms) + f"{ms[0] / ms[-1]:8.2f}")
    print(f"\nmedians of {args.repeat} steps per count, counts interleaved; BLAS {facts.get('blas', '?')}")
    if twin is not None:
        ours_parts = {t: defaultdict(list) for t in args.threads}
        for t in args.threads:
            for r in range(args.repeat):
                grouped: dict = defaultdict(float)
                for name, series in per[t].items():
                    grouped[our_part(name)] += series[r] if r < len(series) else 0.0
                for part in PARTS:
                    ours_parts[t][part].append(1e3 * grouped.get(part, 0.0))
        print_parts(list(args.threads), ours_parts, twin_per, {t: [1e3 * v for v in bare[t]] for t in args.threads},
                    {t: [1e3 * v for v in twin_bare[t]] for t in args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
