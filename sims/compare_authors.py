#!/usr/bin/env python3
"""bioplaus beside the authors' own code: the same conv runs, both sides, one table.

    python sims/compare_authors.py --authors PATH_OR_URL --authors-python PY --scratch DIR \\
        [--side both|authors|ours] [--variants glob pred ...] [--seeds 1] [--threads 1] [--jobs 1] \\
        [--data-dir DIR] [--report docs/results/fashion-mnist-vgg8b-short]

What it does, in order (each step skips what is already done, so the same command can be run again
after a stop):

1. **Prepare** ``DIR/authors/``: the authors' ``train.py`` (anokland/local-loss) is copied from
   ``--authors`` (a checkout, the file itself, an https address of the raw file, or a git address to
   clone) and changed only where modern PyTorch requires it (:data:`PATCHES`, each described in
   words); Fashion-MNIST's four IDX files are laid out where torchvision's ``FashionMNIST`` looks for
   them (``DIR/authors/data/FashionMNIST/FashionMNIST/raw``), from ``--data-dir`` or the places bioplaus
   looks (Debian's ``dataset-fashion-mnist``). Nothing of theirs enters this repository.
2. **Run the authors' side**: ``PY train.py ...`` per variant and seed, with ``OMP_NUM_THREADS`` (and
   MKL's) set to ``--threads``, its console output time-stamped line by line into
   ``DIR/authors/logs/<variant>-s<seed>.log`` (the authors' code prints no times: an epoch's seconds
   are from the end of the previous epoch's test pass to its own "Train" line). A run stopped after a
   completed epoch is resumed with their own ``--resume`` from the ``chkp_last_epoch.tar`` they wrote
   then (their checkpoint restores the weights and batch-norm statistics; the local losses' Adam moments
   and the random stream start afresh, so the report marks such a run); otherwise it starts again.
3. **Run ours** with ``sims/sweep.py`` (one sweep per variant into ``DIR/ours/<variant>/``, one job,
   ``--threads-per-job`` = ``--threads``): completed runs are skipped, interrupted ones resumed.
   ``--jobs N`` runs N of the runs of steps 2 and 3 at a time (the authors' and ours, every variant and
   seed: each a process of ``--threads`` threads, so N × threads should not exceed the machine's cores);
   the default, 1, runs them one after another, variant by variant.
4. **Report** (``--report PREFIX``): ``PREFIX.md``, ``PREFIX.csv`` (one row per side, variant, seed
   and epoch) and ``PREFIX.png`` (per-epoch test error, ours beside theirs), from whatever logs exist.

The settings: the paper's ``fashion-mnist-vgg8b-*`` recipes (dropout 0.1, lr 5e-4, Adam, batch 128,
the recipes' nonlinearities and decoder sizes) made affordable the same way on both sides:
``--feat-mult 0.25``, 10 epochs, milestones 5 7 9. The backprop-free rows are the authors' ``--bio``
on the same settings (β 0.01 for predsim, as in the authors' published bpf runs).

The authors' Python (``--authors-python``): any Python with a *matching* torch and torchvision, e.g. a
virtual environment of its own, ``python3 -m venv authors-venv && authors-venv/bin/pip install torch
torchvision`` (the pair the package index resolves together; the runs of
``docs/results/fashion-mnist-vgg8b-short.md`` used PyTorch 2.14.1 and torchvision 0.29.1, CUDA builds,
which train on the CPU under ``--no-cuda``). A CPU-only torch next to a torchvision built for another
torch fails at ``import torchvision`` ("operator torchvision::nms does not exist"): install the two
together.

Not part of CI: a run of every variant on both sides takes hours on a CPU. Run it with the BLAS
override variables unset, as the benchmarks are (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import functools
import gzip
import hashlib
import io
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "bioplaus" / "__init__.py").is_file():
    sys.path.insert(0, str(ROOT))

EPOCHS = 10
MILESTONES = (5, 7, 9)
FEAT_MULT = 0.25
# Flags every run shares, on the authors' side (their spelling) ...
AUTHORS_COMMON = ["--model", "vgg8b", "--dataset", "FashionMNIST", "--dropout", "0.1", "--lr", "5e-4",
                  "--epochs", str(EPOCHS), "--lr-decay-milestones", *map(str, MILESTONES),
                  "--feat-mult", str(FEAT_MULT), "--no-cuda"]
# ... and on ours (sims/sweep.py --set, on top of the recipe).
OURS_COMMON = ["--epochs", str(EPOCHS), "--set", f"feat_mult={FEAT_MULT}",
               "--set", "lr_decay_milestones=" + " ".join(map(str, MILESTONES))]


@dataclass(frozen=True)
class Variant:
    name: str
    authors: tuple[str, ...]  # the authors' flags beyond AUTHORS_COMMON
    recipe: str  # our recipe ...
    sets: tuple[str, ...] = ()  # ... and the --set values on top of it


VARIANTS = {v.name: v for v in (
    Variant("glob", ("--backprop",), "fashion-mnist-vgg8b-glob"),
    Variant("pred", ("--loss-sup", "pred", "--dim-in-decoder", "1024"), "fashion-mnist-vgg8b-pred"),
    Variant("sim", ("--loss-sup", "sim", "--nonlin", "leakyrelu"), "fashion-mnist-vgg8b-sim"),
    Variant("predsim", ("--loss-sup", "predsim", "--nonlin", "leakyrelu", "--dim-in-decoder", "1024"),
            "fashion-mnist-vgg8b-predsim"),
    Variant("pred-bpf", ("--bio", "--loss-sup", "pred", "--dim-in-decoder", "1024"), "fashion-mnist-vgg8b-pred",
            ("variant=pred-bpf",)),
    Variant("sim-bpf", ("--bio", "--loss-sup", "sim", "--nonlin", "leakyrelu"), "fashion-mnist-vgg8b-sim",
            ("variant=sim-bpf",)),
    Variant("predsim-bpf", ("--bio", "--loss-sup", "predsim", "--nonlin", "leakyrelu", "--dim-in-decoder", "1024",
                            "--beta", "0.01"), "fashion-mnist-vgg8b-predsim", ("variant=predsim-bpf", "beta=0.01")),
)}

# Every change made to the authors' train.py: (what and why, the exact text, its replacement).
PATCHES = (
    (("Function.saved_variables, which LinearFAFunction.backward reads (the feedback-alignment decoder of "
     "--bio), was removed from PyTorch; saved_tensors is the same tuple under its current name"),
     "context.saved_variables", "context.saved_tensors"),
    (("torch.load, which their --resume calls, refuses pickled Python objects since PyTorch 2.6 (weights_only "
      "became the default) and their checkpoint holds the run's argparse Namespace; weights_only=False loads it "
      "as the PyTorch of their time did (only used when a stopped run is resumed)"),
     "torch.load(args.resume)", "torch.load(args.resume, weights_only=False)"),
)
# The thread count needs no change: torch sizes its pool from OMP_NUM_THREADS, set in the environment.

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class CompareError(Exception):
    """Bad input: one sentence."""


# ---------------------------------------------------------------------- preparing the authors' side
def fetch_train_py(source: str, scratch: Path) -> bytes:
    """The authors' train.py from a checkout, the file, an https address or a git address."""
    path = Path(source)
    if path.is_dir():
        path = path / "train.py"
    if path.is_file():
        return path.read_bytes()
    if re.match(r"^https?://", source) and source.endswith(".py"):
        try:
            with urllib.request.urlopen(source, timeout=60) as resp:
                return resp.read()
        except OSError as exc:  # urllib's errors included
            raise CompareError(f"--authors {source} could not be read ({exc})") from None
    if re.match(r"^(https?://|git@|file://)", source) or source.endswith(".git"):
        clone = scratch / "authors" / "checkout"
        if not clone.is_dir():
            try:
                subprocess.run(["git", "clone", "--depth", "1", source, str(clone)], check=True)
            except subprocess.CalledProcessError as exc:
                raise CompareError(f"--authors {source} could not be cloned (git exited with {exc.returncode})") from None
            except OSError as exc:
                raise CompareError(f"--authors {source} could not be cloned ({exc})") from None
        if not (clone / "train.py").is_file():
            raise CompareError(f"--authors {source} has no train.py at its top")
        return (clone / "train.py").read_bytes()
    raise CompareError(f"--authors {source} is neither a folder with train.py, the file, nor an address")


def patch(text: str) -> str:
    """The authors' train.py with every change of :data:`PATCHES`; a change already made is left as it is, so a
    scratch folder prepared by an earlier version of this script gets the changes added since."""
    for why, old, new in PATCHES:
        if old in text:
            text = text.replace(old, new)
        elif new not in text:
            raise CompareError(f"the authors' train.py has no {old!r} to change ({why.split(',')[0]}); "
                               "is it anokland/local-loss's?")
    return text


def find_fashion_mnist(data_dir: str | None) -> dict:
    """{IDX file name: path} of full Fashion-MNIST, found (and checked) exactly as a bioplaus run finds it,
    so both sides read the same files."""
    from bioplaus.data.fetch import DataError, locate_files
    from bioplaus.data.registry import get_spec

    try:
        found, _source = locate_files(get_spec("fashion-mnist"), data_dir, download=False, progress=False)
    except DataError as exc:
        raise CompareError(f"full Fashion-MNIST was not found ({exc}); apt-get install dataset-fashion-mnist, "
                           "or give --data-dir") from None
    return {Path(name).name.removesuffix(".gz"): Path(path) for name, path in found.items()}


def prepare(args, scratch: Path) -> Path:
    """``scratch/authors`` made ready (see the module's docstring). On an error, the folders this call
    made are removed again, so a bad ``--authors`` or ``--data-dir`` leaves nothing behind."""
    work = scratch / "authors"
    made = work
    while not made.parent.exists():
        made = made.parent
    made = None if made.exists() else made  # the outermost folder this call may create
    try:
        return _prepare(args, work)
    except BaseException:
        if made is not None and made.is_dir():
            shutil.rmtree(made)
        raise


def _prepare(args, work: Path) -> Path:
    train_py = work / "train.py"
    raw = work / "data" / "FashionMNIST" / "FashionMNIST" / "raw"  # root '../data/FashionMNIST' from work/run
    # First everything that can fail on the user's input, then the writes.
    original = None
    if train_py.is_file():
        text = train_py.read_text(encoding="utf-8")
        patched = patch(text)
    else:
        original = fetch_train_py(args.authors, work.parent)
        try:
            text, patched = "", patch(original.decode("utf-8"))
        except UnicodeDecodeError:
            raise CompareError(f"--authors {args.authors}: its train.py is not UTF-8 text") from None
    found = None if all((raw / f).is_file() for f in IDX_FILES) else find_fashion_mnist(args.data_dir)
    work.mkdir(parents=True, exist_ok=True)
    if patched != text:
        _write_whole(train_py, patched.encode("utf-8"))
    if original is not None:
        commit = ""
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            if Path(args.authors, ".git").exists():
                commit = subprocess.run(["git", "-C", args.authors, "rev-parse", "HEAD"], check=True,
                                        capture_output=True, text=True).stdout.strip()
        _write_whole(work / "SOURCE.txt", (f"source: {args.authors}{f' at commit {commit}' if commit else ''}\n"
                                           f"sha256 of the original train.py: {hashlib.sha256(original).hexdigest()}\n"
                                           ).encode())
    if found is not None:
        raw.mkdir(parents=True, exist_ok=True)
        for f in IDX_FILES:
            data = found[f].read_bytes()
            _write_whole(raw / f, gzip.decompress(data) if found[f].suffix == ".gz" else data)
    (work / "run").mkdir(exist_ok=True)
    return work


def _write_whole(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or is left as it was (a full disk leaves no half file that a later
    run would take as done)."""
    part = path.with_name(path.name + ".part")
    try:
        part.write_bytes(data)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


# ---------------------------------------------------------------------- running
def check_authors_python(python: str) -> None:
    """``python`` runs and imports torch and torchvision (a torch and a torchvision built for different
    torches fail here, not an hour into a run)."""
    try:
        probe = subprocess.run([python, "-c", "import torch, torchvision"], capture_output=True, text=True,
                               timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompareError(f"--authors-python {python} cannot be run ({exc})") from None
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        raise CompareError(f"--authors-python {python} cannot import torch and torchvision ({last})")


def authors_log(scratch: Path, variant: str, seed: int) -> Path:
    return scratch / "authors" / "logs" / f"{variant}-s{seed}.log"


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def authors_command(python: str, variant: Variant, seed: int, save_dir: Path, train_py: str = "train.py") -> list[str]:
    return [python, "-u", train_py, *AUTHORS_COMMON, *variant.authors, "--seed", str(seed),
            "--save-dir", str(save_dir)]


def resume_point(work: Path, variant: str, seed: int, done: int) -> Path | None:
    """The authors' own checkpoint to resume a stopped run from: their ``chkp_last_epoch.tar``, when it was
    written at the end of the last epoch the log completed (``done``), else None (the run starts again)."""
    folder = work / "checkpoints" / f"{variant}-s{seed}"
    for last in folder.glob("**/chkp_last_epoch.tar"):
        same_epoch = list(last.parent.glob(f"chkp_ep{done}_*.tar"))
        later = list(last.parent.glob(f"chkp_ep{done + 1}_*.tar"))
        if same_epoch and not later and last.stat().st_mtime >= max(f.stat().st_mtime for f in same_epoch):
            return last
    return None


def run_authors(args, work: Path, variant: Variant, seed: int) -> None:
    log = authors_log(work.parent, variant.name, seed)
    done = len(parse_authors(log.read_text(encoding="utf-8"))["test_error"]) if log.is_file() else 0
    if done >= EPOCHS:
        print(f"authors {variant.name} seed {seed}: done ({log})")
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = authors_command(args.authors_python, variant, seed, work / "checkpoints" / f"{variant.name}-s{seed}",
                          str(work / "train.py"))
    resume = resume_point(work, variant.name, seed, done) if done else None
    if resume is not None:
        cmd += ["--resume", str(resume)]
    print(f"authors {variant.name} seed {seed}: {shlex.join(cmd)}", flush=True)
    with open(log, "a" if resume is not None else "w", encoding="utf-8") as out:
        if resume is not None:
            out.write(f"{time.time():.3f} # resumed after epoch {done} with their --resume\n")
        out.write(f"{time.time():.3f} # command (in {work / 'run'}): {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=work / "run", env=thread_env(args.threads), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            out.write(f"{time.time():.3f} {line}")
            out.flush()
        status = proc.wait()
        out.write(f"{time.time():.3f} # exit status {status}\n")
    if status != 0:
        raise CompareError(f"the authors' {variant.name} run (seed {seed}) exited with status {status}; see {log}")


def ours_folder(scratch: Path, variant: str) -> Path:
    return scratch / "ours" / variant


def ours_command(variant: Variant, seeds, threads: int, out_dir: Path) -> list[str]:
    sets = [a for s in variant.sets for a in ("--set", s)]
    return [sys.executable, str(ROOT / "sims" / "sweep.py"), "--recipes", variant.recipe, "--seeds", *map(str, seeds),
            *OURS_COMMON, *sets, "--out-dir", str(out_dir), "--jobs", "1", "--threads-per-job", str(threads)]


def run_ours(args, scratch: Path, variant: Variant) -> None:
    cmd = ours_command(variant, args.seeds, args.threads, ours_folder(scratch, variant.name))
    print(f"ours {variant.name}: {shlex.join(cmd)}", flush=True)
    status = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if status != 0:
        raise CompareError(f"our {variant.name} sweep exited with status {status}")


def runs(args, scratch: Path, work: Path | None) -> list:
    """Every run the command asks for, in the order one at a time takes them: per variant, the authors'
    seeds, then our sweep."""
    out = []
    for v in args.variants:
        if args.side in ("both", "authors"):
            out += [functools.partial(run_authors, args, work, VARIANTS[v], seed) for seed in args.seeds]
        if args.side in ("both", "ours"):
            out.append(functools.partial(run_ours, args, scratch, VARIANTS[v]))
    return out


def run_all(todo: list, jobs: int) -> None:
    """``todo`` (callables, each one run) ``jobs`` at a time. A run that fails does not stop the others
    (they are hours long and resumable); the first failure is raised when all have ended. One job runs
    them in order."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(run) for run in todo]
        errors = [f.exception() for f in futures]  # waits for every run
    finally:  # on Ctrl-C: the runs going end with it (same process group); none starts after it
        pool.shutdown(wait=True, cancel_futures=True)
    for exc in errors:
        if exc is not None:
            raise exc


# ---------------------------------------------------------------------- reading both sides
_TRAIN = re.compile(r"^([\d.]+) Train epoch=(\d+), lr=([\d.e+-]+), .*error=([\d.]+)%")
_TEST = re.compile(r"^([\d.]+) Test loss_global=([\d.naninf+-]+), error=([\d.]+)%")
_START = re.compile(r"^([\d.]+) Model \S+ has \d+ parameters")


_RESUMED = re.compile(r"^[\d.]+ # resumed after epoch (\d+)")


def parse_authors(text: str) -> dict:
    """Per epoch: train and test error (%) and training seconds, from a time-stamped authors' log; and the
    epochs after which the run was stopped and resumed (an epoch cut short by the stop is dropped: the resumed
    run trains it again)."""
    out = {"train_error": [], "test_error": [], "seconds": [], "lr": [], "resumed_after": []}
    last = None
    for line in text.splitlines():
        if m := _START.match(line):
            last = float(m.group(1))
        elif m := _RESUMED.match(line):
            out["resumed_after"].append(int(m.group(1)))
        elif m := _TRAIN.match(line):
            t, epoch = float(m.group(1)), int(m.group(2))
            for key in ("train_error", "test_error", "seconds", "lr"):
                del out[key][epoch - 1:]
            out["seconds"].append(t - last if last is not None else float("nan"))
            out["lr"].append(float(m.group(3)))
            out["train_error"].append(float(m.group(4)))
        elif m := _TEST.match(line):
            last = float(m.group(1))
            out["test_error"].append(float(m.group(3)))
    n = len(out["test_error"])
    return {k: v if k == "resumed_after" else v[:n] for k, v in out.items()}


def read_sides(scratch: Path, variants, seeds) -> list[dict]:
    """Rows (side, variant, seed, epoch, train_error, test_error, seconds) of every log found."""
    from bioplaus.log import LogError, read_run

    rows = []
    for v in variants:
        for seed in seeds:
            log = authors_log(scratch, v, seed)
            if log.is_file():
                a = parse_authors(log.read_text(encoding="utf-8"))
                for e in range(len(a["test_error"])):
                    rows.append({"side": "authors", "variant": v, "seed": seed, "epoch": e + 1,
                                 "train_error": a["train_error"][e], "test_error": a["test_error"][e],
                                 "seconds": a["seconds"][e]})
            for path in sorted(ours_folder(scratch, v).glob(f"*-s{seed}.h5")):
                try:
                    run = read_run(str(path))
                except LogError:
                    continue
                ep = run.epochs
                for e in range(len(ep["test_error"])):
                    rows.append({"side": "bioplaus", "variant": v, "seed": seed, "epoch": int(ep["epoch"][e]),
                                 "train_error": float(ep["train_error"][e]), "test_error": float(ep["test_error"][e]),
                                 "seconds": float(ep["seconds"][e])})
    return rows


# ---------------------------------------------------------------------- the report
def _series(rows, side, variant):
    """{seed: test errors by epoch} of one side and variant."""
    by_seed: dict = {}
    for r in rows:
        if r["side"] == side and r["variant"] == variant:
            by_seed.setdefault(r["seed"], {})[r["epoch"]] = r
    return by_seed


def _mean(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def _median(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def summarise(rows, variants) -> list[dict]:
    """Per variant: each side's last-epoch and last-3 mean test error (means over the complete seeds),
    their differences (ours − theirs), s/epoch of each (the median and the fastest epoch: the runs share
    the machine, and an epoch slowed by other work, or paused, says nothing about the code)."""
    out = []
    for v in variants:
        s = {"variant": v}
        for side in ("authors", "bioplaus"):
            complete = {seed: eps for seed, eps in _series(rows, side, v).items() if len(eps) >= EPOCHS}
            last = [eps[EPOCHS]["test_error"] for eps in complete.values()]
            last3 = [_mean([eps[e]["test_error"] for e in range(EPOCHS - 2, EPOCHS + 1)]) for eps in complete.values()]
            secs = [r["seconds"] for eps in _series(rows, side, v).values() for r in eps.values()]
            done = [len(eps) for eps in _series(rows, side, v).values()]
            s[side] = {"seeds": sorted(complete), "last": _mean(last), "last3": _mean(last3),
                       "last_by_seed": last, "seconds": _median(secs),
                       "fastest": min((x for x in secs if not math.isnan(x)), default=float("nan")),
                       "epochs": max(done, default=0)}
        # Where a side has not finished: the difference at the last epoch both sides reached (seed means).
        common = min(s["authors"]["epochs"], s["bioplaus"]["epochs"])
        s["common"] = common
        s["d_common"] = (_mean([eps[common]["test_error"] for eps in _series(rows, "bioplaus", v).values()
                                if common in eps])
                         - _mean([eps[common]["test_error"] for eps in _series(rows, "authors", v).values()
                                  if common in eps])) if common else float("nan")
        s["d_last"] = s["bioplaus"]["last"] - s["authors"]["last"]
        s["d_last3"] = s["bioplaus"]["last3"] - s["authors"]["last3"]
        s["ok"] = abs(s["d_last"]) <= 0.5 and abs(s["d_last3"]) <= 0.4
        out.append(s)
    return out


def _f(x, fmt="{:.2f}"):
    return "–" if math.isnan(x) else fmt.format(x)


def _seconds(side: dict) -> str:
    if math.isnan(side["seconds"]):
        return "–"
    return f"{side['seconds']:.0f} ({side['fastest']:.0f})"


def markdown(rows, summary, variants, seeds, command: str, source: str, environment=(), resumed=None) -> str:
    resumed = resumed or {}
    lines = [
        "# VGG8B on full Fashion-MNIST, short schedule: bioplaus beside the authors' code", "",
        ("Both sides: vgg8b with `--feat-mult 0.25`, full Fashion-MNIST (Debian's `dataset-fashion-mnist`), "
        f"{EPOCHS} epochs, learning rate decayed by 0.25 after epochs {', '.join(map(str, MILESTONES))}, the "
        "`fashion-mnist-vgg8b-*` recipes' other settings (dropout 0.1, lr 5e-4, Adam, batch 128; leaky ReLU for "
        "sim and predsim; decoder input 1024 for pred and predsim); the backprop-free rows are the authors' "
        "`--bio` on the same settings (β 0.01 for predsim-bpf, as in their published bpf runs). Same seeds "
        f"({', '.join(map(str, seeds))}), one thread a side. Generated by `{command}`."), "",
        ("| variant | epochs run (authors / ours) | authors: last epoch | ours: last epoch | Δ last (pp) | "
        "authors: mean of last 3 | ours: mean of last 3 | Δ last 3 (pp) | Δ at the last epoch both reached (pp) | "
        "authors s/epoch (fastest) | ours s/epoch (fastest) | within 0.5 / 0.4 pp |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        a, o = s["authors"], s["bioplaus"]
        ok = "yes" if s["ok"] else ("–" if math.isnan(s["d_last"]) else "**no**")
        common = f"{_f(s['d_common'], '{:+.2f}')} (epoch {s['common']})" if s["common"] else "–"
        ok = ok if s["common"] >= EPOCHS else "not finished"
        lines.append(f"| {s['variant']} | {a['epochs']} / {o['epochs']} | {_f(a['last'])} | {_f(o['last'])} | "
                     f"{_f(s['d_last'], '{:+.2f}')} | {_f(a['last3'])} | {_f(o['last3'])} | "
                     f"{_f(s['d_last3'], '{:+.2f}')} | {common} | {_seconds(a)} | {_seconds(o)} | {ok} |")
    lines += ["", ("Test error in %, means over the seeds that completed both sides' 10 epochs; Δ = ours − "
              "the authors'. s/epoch: training time of an epoch (evaluation not counted), the median over the "
              "epochs run and, in brackets, the fastest. These are not a speed comparison: the two sides ran at "
              "the same time on one machine, beside other work, and an epoch during which a run was paused counts "
              "its pause; the fastest epoch is the nearest to a quiet one. Speed side by side on a quiet machine is "
              "`sims/benchmarks/bench_train.py`'s (README). A variant that has not run all its epochs on both "
              "sides is \"not finished\": run the same command again and both sides resume where they stopped "
              "(ours bit for bit; the authors' from their own checkpoint of the last completed epoch, see below)."), ""]
    for (v, seed), after in sorted(resumed.items()):
        lines.append(f"- The authors' {v} (seed {seed}) was stopped and resumed after epoch "
                     f"{', '.join(map(str, after))} with their own `--resume`: their checkpoint restores the weights "
                     "and batch-norm statistics, but not the local losses' Adam moments (each layer's optimiser "
                     "starts afresh) nor the random stream (re-seeded), so the epochs after it are not the ones an "
                     "unbroken run would give.")
    if resumed:
        lines.append("")
    lines += ["## Every epoch", ""]
    for v in variants:
        sides = {side: _series(rows, side, v) for side in ("authors", "bioplaus")}
        header = ["epoch"] + [f"{'authors' if side == 'authors' else 'ours'} s{seed}"
                              for side in ("authors", "bioplaus") for seed in sorted(sides[side])]
        if len(header) == 1:
            continue
        lines += [f"### {v}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for e in range(1, EPOCHS + 1):
            cells = [str(e)]
            for side in ("authors", "bioplaus"):
                for seed in sorted(sides[side]):
                    r = sides[side][seed].get(e)
                    cells.append(_f(r["test_error"]) if r else "")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Where it ran", "", *[f"- {line}" for line in environment], "", "## Commands", "",
              ("The authors' side, per variant (run in `authors/run/` of the scratch folder, `OMP_NUM_THREADS` "
              "set to the thread count):"), "", "```bash"]
    for v in variants:
        lines.append(shlex.join(authors_command("python", VARIANTS[v], seeds[0], Path("CKPT")))
                     .replace(f"--seed {seeds[0]}", "--seed S"))
    lines += ["```", "", "Ours, per variant:", "", "```bash"]
    for v in variants:
        cmd = ours_command(VARIANTS[v], seeds, 1, Path(f"OUT/{v}"))
        lines.append(shlex.join(["python", "sims/sweep.py", *cmd[2:]]))
    lines += ["```", "", f"The authors' code: {source}. Changed only where modern PyTorch requires it:", ""]
    lines += [f"- `{old}` → `{new}`: {why}." for why, old, new in PATCHES]
    lines += [("- nothing else: the thread count comes from `OMP_NUM_THREADS`, the data from torchvision's own "
              "`FashionMNIST` reading the four IDX files laid out where it looks, checkpoints go to `--save-dir`."), ""]
    return "\n".join(lines)


def figure(rows, variants):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bioplaus.analysis import rule_color

    cols = 4
    nrows = -(-len(variants) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False, sharex=True)
    for ax, v in zip(axes.ravel(), variants):
        color = rule_color(v)  # the rule's colour in every bioplaus figure
        for side, style in (("authors", "--"), ("bioplaus", "-")):
            for seed, eps in sorted(_series(rows, side, v).items()):
                es = sorted(eps)
                ax.plot(es, [eps[e]["test_error"] for e in es], style, color=color, marker="o", ms=2.5,
                        label=f"{'authors' if side == 'authors' else 'bioplaus'} s{seed}")
        ax.set_title(v)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_yticks([])
    for ax in axes.ravel()[len(variants):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("test error (%)")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    fig.suptitle(f"vgg8b ×{FEAT_MULT:g} on Fashion-MNIST, {EPOCHS} epochs: bioplaus (solid) and the authors' "
                 "code (dashed)")
    fig.tight_layout()
    return fig


def describe_environment(args, scratch: Path) -> list[str]:
    """Lines naming the machine and both sides' software, from what the runs recorded and the Pythons given."""
    import json
    import platform

    import numpy

    import bioplaus

    lines = [f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"]
    for v in args.variants:
        record = ours_folder(scratch, v) / "sweeps.jsonl"
        if record.is_file():
            with contextlib.suppress(OSError, ValueError, IndexError):
                first = json.loads(record.read_text(encoding="utf-8").splitlines()[0])
                lines[0] = f"machine: {first['machine']} (as our first sweep recorded it)"
                break
    lines.append(f"ours: bioplaus {bioplaus.__version__}, NumPy {numpy.__version__}, Python {platform.python_version()}")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        code = "import platform, torch, torchvision; print(torch.__version__, torchvision.__version__, " \
               "platform.python_version())"
        probe = subprocess.run([args.authors_python, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout.split()
        if len(probe) == 3:
            lines.append(f"the authors' code: PyTorch {probe[0]}, torchvision {probe[1]}, Python {probe[2]}")
    return lines


def write_report(args, scratch: Path, command: str) -> None:
    from bioplaus import files
    from bioplaus.analysis import figure_png

    rows = read_sides(scratch, args.variants, args.seeds)
    if not rows:
        raise CompareError(f"no logs of either side in {scratch}")
    summary = summarise(rows, args.variants)
    source = (scratch / "authors" / "SOURCE.txt").read_text(encoding="utf-8").strip().replace("\n", "; ") \
        if (scratch / "authors" / "SOURCE.txt").is_file() else args.authors
    resumed = {}
    for v in args.variants:
        for seed in args.seeds:
            log = authors_log(scratch, v, seed)
            if log.is_file() and (after := parse_authors(log.read_text(encoding="utf-8"))["resumed_after"]):
                resumed[v, seed] = after
    text = markdown(rows, summary, args.variants, args.seeds, command, source, describe_environment(args, scratch),
                    resumed)
    buf = io.StringIO()
    fields = ["side", "variant", "seed", "epoch", "train_error", "test_error", "seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    prefix = args.report
    outputs = [files.Output.markdown(prefix + ".md", command, text),
               files.Output(prefix + ".csv", buf.getvalue().encode(), (",".join(fields).encode(),)),
               files.Output.png(prefix + ".png", figure_png(figure(rows, args.variants), dpi=150))]
    for path in files.write_outputs(outputs, "--report"):
        print(f"wrote {path}")
    for s in summary:
        print(f"{s['variant']:12s} authors {_f(s['authors']['last'])} ours {_f(s['bioplaus']['last'])} "
              f"Δ {_f(s['d_last'], '{:+.2f}')}  last-3 Δ {_f(s['d_last3'], '{:+.2f}')}")


# ---------------------------------------------------------------------- command line
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--authors", help="the authors' code: a checkout of anokland/local-loss, its train.py, an "
                        "https address of train.py, or a git address")
    parser.add_argument("--authors-python", default="python3", help="a Python with torch and torchvision")
    parser.add_argument("--scratch", required=True, help="the folder both sides work in")
    parser.add_argument("--side", choices=("both", "authors", "ours", "none"), default="both")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--threads", type=int, default=1, help="threads of each run, on either side")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (either side, any variant and seed)")
    parser.add_argument("--data-dir", help="a folder with Fashion-MNIST's four IDX files (default: where bioplaus "
                        "looks)")
    parser.add_argument("--report", metavar="PREFIX", help="write PREFIX.md, .csv and .png from the logs")
    args = parser.parse_args(argv)
    scratch = Path(args.scratch).resolve()
    command = shlex.join(["python", "sims/compare_authors.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        if args.threads < 1 or args.jobs < 1:
            raise CompareError(f"--threads and --jobs must be at least 1 (got {args.threads} and {args.jobs})")
        work = None
        if args.side in ("both", "authors"):
            if not args.authors and not (scratch / "authors" / "train.py").is_file():
                raise CompareError("--authors is needed to prepare the authors' side")
            check_authors_python(args.authors_python)
            work = prepare(args, scratch)
        run_all(runs(args, scratch, work), args.jobs)
        if args.report:
            write_report(args, scratch, command)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to carry on", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
