"""The machine facts every benchmark prints in its header and writes into its JSON.

    import machine                      # the benchmarks put this folder on sys.path
    info = machine.blas_info()          # a dict (JSON-ready): CPU, numpy, BLAS library, version, kernel, threads
    print("\\n".join(machine.header_lines(info)))

The BLAS is NumPy's, read with threadpoolctl at the moment of the call (so after a script has set
its thread limit): the library (``internal_api``), its version, its kernel (``architecture``: the
code path OpenBLAS picked for this CPU) and its thread count. Without threadpoolctl the header says
``BLAS: unknown, pip install threadpoolctl`` (and what NumPy was built against, if it says).

``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` force OpenBLAS onto a named (older) kernel and cache
size; some development and CI machines set them as a guard for old OpenBLAS builds. On a CPU with
AVX-512 ``OPENBLAS_CORETYPE=Haswell`` runs AVX2 kernels at under half the float32 matmul rate, while
PyTorch ignores the variables. A user's machine has no such override, so benchmarks are run with
both variables unset in the benchmark's command alone::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python sims/benchmarks/bench_train.py ...

Tests and CI leave the variables as they are. When either is set, the header carries a WARNING line.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np

FORCING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
UNSET = "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"
NOTE = (f"Benchmarks are run with {' and '.join(FORCING_VARS)} unset in the benchmark's command alone "
        f"({UNSET} python ...): they force older BLAS kernels that a user's machine does not use. "
        "Tests and CI leave them as they are.")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _numpy_build_blas() -> str | None:
    """What NumPy says it was built against ("scipy-openblas 0.3.31"), or None."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 -- older NumPy (no mode=), other layouts: just not known
        return None


def _is_numpys(filepath: str) -> bool:
    root = str(Path(np.__file__).resolve().parent)
    path = str(Path(filepath).resolve())
    return path.startswith((root + os.sep, root + ".libs" + os.sep))


def forced() -> dict[str, str]:
    """The kernel-forcing variables set in this environment, with their values."""
    return {k: os.environ[k] for k in FORCING_VARS if k in os.environ}


def blas_info() -> dict:
    """This machine and NumPy's BLAS as a JSON-ready dict. ``blas`` etc. are None where unknown."""
    info = {
        "cpu": _cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(), "system": platform.system(),
        "python": platform.python_version(), "numpy": np.__version__,
        "blas": None, "blas_version": None, "blas_kernel": None, "blas_threads": None,
        "blas_threading_layer": None, "blas_file": None, "other_blas": [],
        "threadpoolctl": None, "numpy_built_with": _numpy_build_blas(),
        "forced": forced(), "thread_env": {k: os.environ[k] for k in THREAD_VARS if k in os.environ},
    }
    try:
        import threadpoolctl
    except ImportError:
        return info
    info["threadpoolctl"] = threadpoolctl.__version__
    libs = [lib for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]
    if not libs:
        return info
    ours = next((lib for lib in libs if _is_numpys(lib.get("filepath", ""))), libs[0])
    info.update(blas=ours.get("internal_api"), blas_version=ours.get("version"),
                blas_kernel=ours.get("architecture"), blas_threads=ours.get("num_threads"),
                blas_threading_layer=ours.get("threading_layer"), blas_file=Path(ours.get("filepath", "")).name)
    info["other_blas"] = [{"blas": lib.get("internal_api"), "version": lib.get("version"),
                           "kernel": lib.get("architecture"), "threads": lib.get("num_threads"),
                           "file": lib.get("filepath")} for lib in libs if lib is not ours]
    return info


def warning_lines() -> list[str]:
    """One WARNING line when OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE is set, else none."""
    set_vars = forced()
    if not set_vars:
        return []
    command = "python " + (shlex.join(sys.argv) if sys.argv and sys.argv[0].endswith(".py") else "...")
    shown = " and ".join(f"{k}={shlex.quote(v)}" for k, v in set_vars.items())
    it = "are set: they force" if len(set_vars) > 1 else "is set: it forces"
    line = (f"WARNING: {shown} {it} OpenBLAS onto older kernels (e.g. AVX2 on an AVX-512 CPU, under half the "
            f"matmul rate) that a user's machine does not run, so these timings are not a user's. Run benchmarks "
            f"with both unset: {UNSET} {command}")
    return [line]


def _threads(n) -> str:
    return f"{n} thread{'' if n == 1 else 's'}"


def header_lines(info: dict | None = None) -> list[str]:
    """The header: the machine, numpy, the BLAS (library, version, kernel, threads), then any WARNING."""
    info = info or blas_info()
    first = (f"machine: {info['cpu']} ({info['arch']}, {info['cores']} cores, {info['system']}); "
             f"python {info['python']}, numpy {info['numpy']}")
    lines = [first]
    if info["blas"] is None:
        built = f" (numpy was built with {info['numpy_built_with']})" if info["numpy_built_with"] else ""
        why = "pip install threadpoolctl" if info["threadpoolctl"] is None else "threadpoolctl sees no BLAS loaded"
        lines.append(f"BLAS: unknown, {why}{built}")
    else:
        kernel = info["blas_kernel"] or "n/a (not reported by this library)"
        layer = f", {info['blas_threading_layer']}" if info["blas_threading_layer"] else ""
        lines.append(f"BLAS: {info['blas']} {info['blas_version']}, kernel {kernel}, "
                     f"{_threads(info['blas_threads'])}{layer} ({info['blas_file']})")
        for other in info["other_blas"]:
            lines.append(f"      also loaded: {other['blas']} {other['version']}, kernel {other['kernel']}, "
                         f"{_threads(other['threads'])} ({Path(other['file'] or '').name})")
    return lines + warning_lines()


def print_header(info: dict | None = None, file=None) -> dict:
    """Print :func:`header_lines` (to stdout by default) and return the facts, for the JSON."""
    info = info or blas_info()
    print("\n".join(header_lines(info)), file=file or sys.stdout, flush=True)
    return info


def warn_if_forced(file=None) -> bool:
    """Print the WARNING line (to stderr by default) if a kernel-forcing variable is set; say whether."""
    lines = warning_lines()
    if lines:
        print("\n".join(lines), file=file or sys.stderr, flush=True)
    return bool(lines)


def json_path(text: str) -> Path:
    """``--json PATH`` (an argparse ``type``): a new file in an existing, writable folder. A benchmark
    never replaces a file, and it checks this before it runs, not after minutes of timing."""
    import argparse

    path = Path(text)
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a file name")
    if os.path.lexists(path):
        raise argparse.ArgumentTypeError(f"{text} exists, and a benchmark never replaces a file; give a new name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {folder}")
    return path


def write_json(path: Path | str, obj, indent: int = 2) -> None:
    """Write ``obj`` to a new file ``path`` (created exclusively: an existing file is never replaced)."""
    import json

    with open(path, "x", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, indent=indent))


if __name__ == "__main__":
    print_header()
