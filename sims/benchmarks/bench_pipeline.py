"""Layer-parallel training against the sequential run: samples/s, the ideal speedup, memory per rank.

    python sims/benchmarks/bench_pipeline.py [--ranks 2] [--json PATH]      # the table (this machine)
    python sims/benchmarks/bench_pipeline.py --predict 8 [--device gpu]     # what N devices would give

Per case (mlp 4x1024 and vgg8b on 28x28x1 fashion-mnist-mini; predsim and predsim-bpf; batch 128),
three runs of the same training epoch over the same batches, each in its own process(es):

    seq1   the sequential trainer, 1 BLAS thread
    seqK   the sequential trainer, K BLAS threads (the machine's cores used the usual way)
    pipe   mpiexec -n K --parallel layers: one stage per rank, 1 BLAS thread each

Each times its second epoch (the first warms up), the same number of batches. ``ideal`` is the
sum of the stages' measured step times over the largest (the same split, timed stage by stage in the
1-thread sequential run); ``pipe/ideal`` says how much of it the pipeline achieves. ``MB/rank``:
each rank's peak resident memory (the dataset is loaded on rank 0 only).

``--predict N``: each block's step time measured on this device (one block per stage), and the
bytes each stage boundary carries per batch, give the pipeline's throughput on N devices:
batch / max over stages (stage time + its outgoing activations / link bandwidth), with the split
balanced on the measured times; for vgg8b, vgg11b and vgg11b(3x) on 32x32x3.

BLAS kernels: benchmarks are run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset in the
benchmark's command alone (they force older OpenBLAS kernels; a user's machine has no such override):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python sims/benchmarks/bench_pipeline.py ...

Tests and CI leave the variables as they are. The header prints the machine, numpy and its BLAS
(library, version, kernel, threads), and a WARNING line when either variable is set (``machine.py``).
The header's thread count is this driver's; the runs set their own (seq1 and pipe 1, seqK K).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))

import machine

CASES = [("mlp", "predsim"), ("mlp", "predsim-bpf"), ("vgg8b", "predsim"), ("vgg8b", "predsim-bpf")]


def case_config(model: str, variant: str, device: str = "cpu"):
    from bioplaus.config import Config

    if model == "mlp":
        return Config(variant=variant, model="mlp", num_layers=4, num_hidden=1024, dropout=0.1, device=device,
                      nonlin="leakyrelu" if "sim" in variant else "relu").resolve()
    return Config(variant=variant, model=model, num_layers=1, num_hidden=1024, dropout=0.2, device=device,
                  dim_in_decoder=2048, nonlin="leakyrelu" if "sim" in variant else "relu").resolve()


def subset(batches: int):
    from bioplaus.data import load_dataset
    from bioplaus.data.dataset import Dataset

    ds = load_dataset("fashion-mnist-mini")
    n = batches * 128
    return Dataset(ds.spec, ds.x_train[:n], ds.y_train[:n], ds.x_test[:256], ds.y_test[:256], ds.source)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ inside the processes
def seq_worker(model: str, variant: str, batches: int, sizes: list[int]) -> dict:
    from bioplaus.backend import get_backend
    from bioplaus.train import Trainer

    cfg = case_config(model, variant)
    trainer = Trainer(cfg, get_backend("cpu"), subset(batches), stages=sizes)
    stage_time = [0.0] * len(trainer.stages)
    for k, stage in enumerate(trainer.stages):  # time each stage's steps (for the ideal speedup)
        def timed(x, y, _step=stage.train_step, _k=k):
            t0 = time.perf_counter()
            out = _step(x, y)
            stage_time[_k] += time.perf_counter() - t0
            return out

        stage.train_step = timed
    trainer.train_epoch()  # warm-up
    stage_time = [0.0] * len(trainer.stages)
    t0 = time.perf_counter()
    trainer.train_epoch()
    seconds = time.perf_counter() - t0
    return {"samples_s": batches * 128 / seconds, "stage_seconds": stage_time, "peak_mb": peak_mb()}


def pipe_worker(model: str, variant: str, batches: int, sizes: list[int]) -> dict | None:
    from mpi4py import MPI

    from bioplaus.backend import get_backend
    from bioplaus.parallel import PipelineTrainer, worker

    comm = MPI.COMM_WORLD
    cfg = case_config(model, variant)
    if comm.Get_rank() > 0:
        worker(comm, lambda device: get_backend(device))
        comm.gather(peak_mb(), root=0)
        return None
    trainer = PipelineTrainer(cfg, get_backend("cpu"), subset(batches), comm, sizes)
    trainer.train_epoch()  # warm-up
    t0 = time.perf_counter()
    trainer.train_epoch()  # ends with the last stage's statistics: every stage has finished
    seconds = time.perf_counter() - t0
    trainer.close(0)
    return {"samples_s": batches * 128 / seconds, "peak_mb_per_rank": comm.gather(peak_mb(), root=0)}


# ------------------------------------------------------------------------------ the driver
def spawn(args: list[str], threads: int, ranks: int = 0) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(HERE), *args]
    if ranks:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(ranks: int, batches_mlp: int, batches_vgg: int, cases) -> list[dict]:
    from bioplaus.data import get_spec
    from bioplaus.models import build_spec
    from bioplaus.parallel import plan

    rows = []
    for model, variant in cases:
        batches = batches_mlp if model == "mlp" else batches_vgg
        cfg = case_config(model, variant)
        data = get_spec("fashion-mnist-mini")
        spec = build_spec(cfg, tuple(data.input_shape), data.num_classes)
        sizes, _ = plan(spec, cfg, ranks)
        common = [model, variant, str(batches), ",".join(map(str, sizes))]
        seq1 = spawn(["--worker", "seq", *common], threads=1)
        seqk = spawn(["--worker", "seq", *common], threads=ranks)
        pipe = spawn(["--worker", "pipe", *common], threads=1, ranks=ranks)
        ideal = sum(seq1["stage_seconds"]) / max(seq1["stage_seconds"])
        row = {"model": model, "variant": variant, "ranks": ranks, "stages": [int(s) for s in sizes],
               "batches": batches,
               "seq1_samples_s": seq1["samples_s"], "seqK_samples_s": seqk["samples_s"],
               "pipe_samples_s": pipe["samples_s"], "ideal_speedup": ideal,
               "pipe_over_seq1": pipe["samples_s"] / seq1["samples_s"],
               "pipe_over_seqK": pipe["samples_s"] / seqk["samples_s"],
               "fraction_of_ideal": pipe["samples_s"] / seq1["samples_s"] / ideal,
               "seq1_peak_mb": seq1["peak_mb"], "pipe_peak_mb_per_rank": pipe["peak_mb_per_rank"]}
        rows.append(row)
        print(f"  done {model} {variant}: seq1 {row['seq1_samples_s']:.0f}/s, seq{ranks} {row['seqK_samples_s']:.0f}/s, "
              f"pipe {row['pipe_samples_s']:.0f}/s, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    return rows


def predict(n: int, device: str, bandwidth_gbs: float, small: bool = False) -> list[str]:
    """Measured per-block step times and boundary sizes -> the pipeline's throughput on n devices."""
    import numpy as np

    from bioplaus.backend import get_backend
    from bioplaus.models import build_spec
    from bioplaus.parallel import _sample_shape, balanced_split
    from bioplaus.stage import Stage

    backend = get_backend(device)
    lines = [(f"predicted layer-parallel throughput on {n} devices like this one ({backend.device}), batch 128, "
             f"3x32x32, links of {bandwidth_gbs:g} GB/s (activations cross each stage boundary once per batch):"),
             f"{'model':12s} {'variant':12s} {'1 device/s':>11s} {f'{n} devices/s':>13s} {'speedup':>8s}  split"]
    for model, mult in (("vgg8b", 1.0), ("vgg11b", 1.0), ("vgg11b", 3.0)):
        for variant in ("predsim", "predsim-bpf"):
            cfg = case_config(model, variant, device).replace(feat_mult=mult / 8 if small else mult)
            spec = build_spec(cfg, (3, 32, 32), 10)
            rng = np.random.default_rng(0)
            x = backend.asarray(rng.standard_normal((128, 3, 32, 32), dtype=np.float32))
            y = backend.asarray(rng.integers(0, 10, 128))
            times, sizes_bytes = [], []
            for i in range(len(spec.blocks)):  # one block a stage; its input is the previous block's output
                stage = Stage(cfg, spec, backend, i, i + 1)
                stage.begin_epoch(1)
                stage.train_step(x, y)  # warm-up (kernels, caches)
                backend.synchronize()
                t0 = time.perf_counter()
                for _ in range(3):
                    out = stage.train_step(x, y)
                backend.synchronize()
                times.append((time.perf_counter() - t0) / 3)
                x = out
                sizes_bytes.append(4 * 128 * int(np.prod(_sample_shape(spec, i + 1))) if i + 1 < len(spec.blocks)
                                   else 0)
            k = min(n, len(times))
            split = balanced_split(times, k)
            first, worst = 0, 0.0
            for m in split:
                t = sum(times[first:first + m]) + sizes_bytes[first + m - 1] / (bandwidth_gbs * 1e9)
                worst = max(worst, t)
                first += m
            one = 128 / sum(times)
            many = 128 / worst
            name = model + ("(3x)" if mult != 1 else "")
            lines.append(f"{name:12s} {variant:12s} {one:11.0f} {many:13.0f} {many / one:7.2f}x  {split}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=machine.NOTE)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--cases", default=",".join(f"{m}:{v}" for m, v in CASES))
    p.add_argument("--batches-mlp", type=int, default=40, help="timed batches per mlp epoch (of 128)")
    p.add_argument("--batches-vgg", type=int, default=8, help="timed batches per vgg8b epoch (of 128)")
    p.add_argument("--json", type=machine.json_path)
    p.add_argument("--predict", type=int, help="predict the throughput on N devices instead")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="with --predict")
    p.add_argument("--bandwidth-gbs", type=float, default=25.0, help="with --predict: link bandwidth, GB/s")
    p.add_argument("--small", action="store_true", help="with --predict: channels / 8 (a quick dry run)")
    p.add_argument("--worker", choices=("seq", "pipe"), help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        model, variant, batches, sizes = args.rest
        fn = seq_worker if args.worker == "seq" else pipe_worker
        out = fn(model, variant, int(batches), [int(s) for s in sizes.split(",")])
        if out is not None:
            print(json.dumps(out))
        return 0
    facts = machine.print_header()  # this driver's BLAS; each run sets its own threads (below)
    if not args.predict:
        print(f"(the header's threads are this driver's: seq1 and each pipe rank run 1 BLAS thread, seq{args.ranks} "
              f"{args.ranks})", flush=True)
    if args.predict:
        print("\n".join(predict(args.predict, args.device, args.bandwidth_gbs, args.small)))
        return 0
    cases = [tuple(c.split(":")) for c in args.cases.split(",")]
    load0 = os.getloadavg()[0]
    rows = table(args.ranks, args.batches_mlp, args.batches_vgg, cases)
    blas = f"BLAS {facts['blas']} {facts['blas_version']} kernel {facts['blas_kernel']}" if facts["blas"] \
        else "BLAS: unknown"
    print(f"machine: {os.cpu_count()} cores, {blas}; load before {load0:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"batch 128, fashion-mnist-mini 28x28x1, float32; K = {args.ranks}")
    print(f"{'model':6s} {'variant':12s} {'stages':8s} {'seq1/s':>7s} {f'seq{args.ranks}/s':>7s} {'pipe/s':>7s} "
          f"{'pipe/seq1':>9s} {f'pipe/seq{args.ranks}':>9s} {'ideal':>6s} {'of ideal':>8s} {'MB/rank':>12s}")
    for r in rows:
        mb = "/".join(f"{m:.0f}" for m in r["pipe_peak_mb_per_rank"])
        print(f"{r['model']:6s} {r['variant']:12s} {','.join(map(str, r['stages'])):8s} {r['seq1_samples_s']:7.0f} "
              f"{r['seqK_samples_s']:7.0f} {r['pipe_samples_s']:7.0f} {r['pipe_over_seq1']:8.2f}x "
              f"{r['pipe_over_seqK']:8.2f}x {r['ideal_speedup']:5.2f}x {100 * r['fraction_of_ideal']:7.0f}% {mb:>12s}")
    print("mlp = 4x1024; seqK: the sequential run with K BLAS threads; ideal = sum / max of the measured stage times")
    if args.json:
        for r in rows:
            r["machine"] = facts
        machine.write_json(args.json, rows, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
