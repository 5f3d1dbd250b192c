"""The array module, chosen once: NumPy on the CPU, CuPy on an NVIDIA GPU.

This is the only module that imports CuPy. Everything else asks a :class:`Backend` (or
:func:`get_array_module` for an array it was handed) for ``xp`` and writes its math once.

Random streams are keyed, not global: ``backend.rng(seed, "dropout", block_index, epoch)``
always gives the same stream for the same key, so a block owns its stream and a resumed run
redraws exactly what an uninterrupted one would have drawn.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TRAIN_DTYPE = np.float32  # training runs in float32; float64 is used by the gradient checks

_cupy: Any = None
_cupy_error: str | None = None


class BackendError(RuntimeError):
    """A device was asked for that this machine cannot provide."""


def _load_cupy():
    """Import CuPy on first use, quietly; remember why it failed."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no CUDA device is visible")
            # compile and run a kernel of our own: a broken driver or NVRTC fails here, not mid-run
            probe = cupy.ElementwiseKernel("float32 x", "float32 y", "y = 2 * x + 1", "bioplaus_probe")
            if float(probe(cupy.arange(4, dtype=cupy.float32)).sum()) != 16.0:
                raise RuntimeError("a test kernel gave a wrong result")
            _cupy = cupy
        except Exception as exc:  # noqa: BLE001 -- ImportError, CUDARuntimeError, a broken driver: all mean "no GPU"
            _cupy_error = f"{type(exc).__name__}: {exc}".strip()
    return _cupy


def gpu_available() -> bool:
    """True when CuPy imports and a CUDA device answers."""
    return _load_cupy() is not None


def get_array_module(*arrays):
    """NumPy or CuPy, whichever owns ``arrays`` (NumPy for plain Python values)."""
    if _cupy is not None:
        return _cupy.get_array_module(*arrays)
    return np


def _seed_words(key: tuple) -> list[int]:
    """Turn a key such as (1, "dropout", 3, 7) into integers for a SeedSequence."""
    words = []
    for part in key:
        if isinstance(part, (int, np.integer)):
            words.append(int(part) & 0xFFFFFFFF)
        else:
            digest = hashlib.sha256(str(part).encode()).digest()
            words.append(int.from_bytes(digest[:4], "little"))
    return words


@dataclass(frozen=True)
class Backend:
    """One array module and what goes with it."""

    name: str  # "numpy" or "cupy"
    xp: Any = field(repr=False)

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    @property
    def device(self) -> str:
        """Human-readable device name, written into run logs."""
        if not self.is_gpu:
            import platform

            return f"cpu ({platform.processor() or platform.machine()})"
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        name = props["name"]
        return "gpu (" + (name.decode() if isinstance(name, bytes) else str(name)) + ")"

    def asarray(self, a, dtype=None):
        """Host or device array -> array on this backend (copies only when needed)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        """Array on this backend -> NumPy array (the only device->host transfer point)."""
        if self.is_gpu and isinstance(a, self.xp.ndarray):
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def rng(self, *key):
        """A random generator on this device, fully determined by ``key``."""
        words = _seed_words(key)
        if self.is_gpu:
            seed = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]
            return self.xp.random.default_rng(int(seed))
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))

    def synchronize(self) -> None:
        """Wait for queued device work (for timing only; never inside a training step).

        The whole device, so it holds under per-thread default streams too."""
        if self.is_gpu:
            self.xp.cuda.Device().synchronize()


NUMPY = Backend("numpy", np)

# -------------------------------------------------------------------- device-shaped code paths
_device_paths_on_cpu = False


def on_device(xp) -> bool:
    """True where ``xp`` is a GPU's array module: the code paths shaped for a device (one kernel
    over the whole array, large buffers, fused kernels where a kernel exists) are taken there.

    Tests take the same paths on the CPU under :func:`device_paths_on_cpu`, so a branch chosen by
    array module is exercised on every machine, not only where a GPU happens to be.
    """
    return xp is not np or _device_paths_on_cpu


@contextmanager
def device_paths_on_cpu():
    """Within the block, NumPy takes the GPU's code paths (for tests)."""
    global _device_paths_on_cpu
    saved, _device_paths_on_cpu = _device_paths_on_cpu, True
    try:
        yield
    finally:
        _device_paths_on_cpu = saved


def device_memory_bytes(xp) -> int:
    """Total memory of the device that ``xp`` computes on (the host's RAM for NumPy)."""
    if xp is np:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 8 * 2**30
    return int(xp.cuda.Device().mem_info[1])


def device_key(xp) -> tuple:
    """Identifies the device that ``xp``'s new arrays land on: a cache of device arrays must be
    keyed by it (a process may use several GPUs, each array lives on one)."""
    if xp is np:
        return ("numpy",)
    return (xp.__name__, xp.cuda.Device().id)

# ------------------------------------------------------------------------- element-wise passes
BLOCK = 1 << 18  # elements per block of a multi-pass element-wise loop on the CPU (1 MB of float32; measured)
_pool: ThreadPoolExecutor | None = None


THREAD_LIMITS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_threads: int | None = None  # set by a run's --threads (bioplaus.threads.limit)


def set_cpu_threads(count: int | None) -> int | None:
    """Use ``count`` threads for the element-wise passes (None: as :func:`cpu_threads` finds); returns the
    previous setting. The pool is made anew at its next use."""
    global _threads, _pool
    previous, _threads = _threads, count
    if _pool is not None and count != previous:
        _pool.shutdown(wait=True)
        _pool = None
    return previous


def cpu_threads() -> int:
    """Threads for the element-wise passes: a run's ``--threads``, else the cores this process may run on,
    or fewer when the environment limits the BLAS threads (``OMP_NUM_THREADS=1`` and the like keep them to
    one too)."""
    if _threads is not None:
        return _threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for name in THREAD_LIMITS:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            cores = min(cores, int(value))
    return cores


def _thread_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=cpu_threads(), thread_name_prefix="bioplaus-blocked")
    return _pool


def blocked(xp, n: int, body: Callable[[int, int], None], block: int = BLOCK) -> None:
    """Run ``body(lo, hi)`` over ``[0, n)``, for a body of several element-wise passes.

    On CuPy: once, over everything (each pass is one kernel over the whole array). On NumPy:
    ``block`` items at a time, so the passes over one block read arrays still in the cache instead
    of streaming every array from memory once per pass, and temporaries stay block-sized; the
    blocks are shared among the CPU's cores (NumPy's ufuncs release the GIL). ``body`` must touch
    only items in ``[lo, hi)``.
    """
    if on_device(xp):
        if n > 0:
            body(0, n)
        return
    block = max(1, block)
    workers = 1 if getattr(_in_chunk, "busy", False) else min(cpu_threads(), max(1, n // (2 * block)))

    def run(lo: int, hi: int) -> None:
        for start in range(lo, hi, block):
            body(start, min(hi, start + block))

    if workers == 1:
        run(0, n)
        return
    share = -(-n // (workers * block)) * block  # whole blocks per worker
    bounds = [(lo, min(n, lo + share)) for lo in range(0, n, share)]
    futures = [_thread_pool().submit(run, lo, hi) for lo, hi in bounds[1:]]
    run(*bounds[0])  # this thread takes the first share
    for future in futures:
        future.result()  # re-raises a worker's exception here


PART_MIN = 1 << 16  # items below which a pass is not worth splitting among threads


def in_parts(xp, n: int, body: Callable[[int, int], None], items: int = 0) -> None:
    """Run ``body(lo, hi)`` over ``[0, n)`` in one contiguous part per CPU thread, all at once.

    For a pass that NumPy runs on one core (a strided copy, a layout change) and that splits into
    independent slices of one axis (``n`` of them, ``items`` elements in all): the slices go to the
    CPU's cores (NumPy's copies release the GIL). On CuPy, or for fewer than a couple of
    :data:`PART_MIN` items: once, over everything. ``body`` must touch only its slice.
    """
    workers = 1 if on_device(xp) or getattr(_in_chunk, "busy", False) else min(cpu_threads(), n, max(1, items // PART_MIN))
    if workers <= 1:
        if n > 0:
            body(0, n)
        return
    share = -(-n // workers)
    bounds = [(lo, min(n, lo + share)) for lo in range(0, n, share)]
    futures = [_thread_pool().submit(body, lo, hi) for lo, hi in bounds[1:]]
    body(*bounds[0])  # this thread takes the first part
    for future in futures:
        future.result()  # re-raises a worker's exception here


_in_chunk = threading.local()  # .busy: this thread runs one of several chunks at once (in_chunks)
_blas_libraries: Any = None  # threadpoolctl's controller of the loaded BLAS libraries; False: not installed


def _blas() -> Any:
    global _blas_libraries
    if _blas_libraries is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas_libraries = ThreadpoolController().select(user_api="blas")
        except Exception:  # noqa: BLE001 -- not installed, or a library it cannot read: BLAS left as it is
            _blas_libraries = False
    return _blas_libraries or None


def chunk_workers(xp, chunks: int) -> int:
    """How many chunks of a convolution :func:`in_chunks` runs at once: one per CPU thread (no more than
    the BLAS's own threads, where threadpoolctl can read them), one on a device or without threadpoolctl."""
    libraries = _blas() if not on_device(xp) and chunks > 1 else None
    if libraries is None:
        return 1
    limits = [lib["num_threads"] for lib in libraries.info()]
    return max(1, min(cpu_threads(), chunks, *limits))


def in_chunks(xp, chunks: int, body: Callable[[int, int], None]) -> int:
    """Run ``body(k, worker)`` for every chunk ``k`` in ``[0, chunks)``, on :func:`chunk_workers` threads at
    once (``worker``: which one, so that each keeps its own buffers), each chunk's GEMMs and copies in its
    own thread with the BLAS held to one thread: the cores work on different chunks, not on halves of
    one small GEMM or copy after another (thousands of hand-offs a layer, each a wait on a busy machine).
    Chunks are handed out in order. Returns the number of workers (1: in order, in this thread, the
    BLAS as it was). The results must not depend on which worker ran which chunk: the body adds what
    the chunks share in chunk order (:class:`InOrder`)."""
    workers = chunk_workers(xp, chunks)
    if workers <= 1:
        for k in range(chunks):
            body(k, 0)
        return 1
    lock = threading.Lock()
    handed = iter(range(chunks))

    def work(worker: int) -> None:
        _in_chunk.busy = True  # the other cores are busy with the other chunks: passes inside run inline
        try:
            while True:
                with lock:
                    k = next(handed, None)
                if k is None:
                    return
                body(k, worker)
        finally:
            _in_chunk.busy = False

    with _blas().limit(limits=1):
        futures = [_thread_pool().submit(work, w) for w in range(1, workers)]
        try:
            work(0)
        finally:
            for future in futures:
                future.result()  # waits for every worker (re-raises a worker's exception here)
    return workers


class InOrder:
    """``add(k, part)`` adds ``part`` into a total in the order k = 0, 1, 2, ... whatever order the chunks
    finish in (a chunk's worker waits for its turn), so the sum is the same for any number of workers.
    ``total`` is the first part itself (held, not copied: its chunk gives it up)."""

    def __init__(self) -> None:
        self.total: Any = None
        self._next = 0
        self._failed = False
        self._turn = threading.Condition()

    def add(self, k: int, part, take: bool = False) -> None:
        """Add ``part`` (chunk k's) in turn; ``take``: the first part may be kept as the total itself."""
        with self._turn:
            while self._next != k and not self._failed:
                self._turn.wait()
            if self._failed:
                raise RuntimeError("another chunk failed")
            if self.total is None:
                self.total = part if take else part.copy()
            else:
                self.total += part
            self._next += 1
            self._turn.notify_all()

    def fail(self) -> None:
        """A chunk failed: the others waiting for their turn stop (their error names this one's)."""
        with self._turn:
            self._failed = True
            self._turn.notify_all()


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let this process reuse the memory of the arrays it frees instead of returning it to the system.

    A training step allocates and frees the same large arrays (feature maps, their errors, the
    convolutions' buffers) every step. glibc's malloc serves each block above 32 MB (and, after its
    threshold adapts, most above 128 KB) by a fresh ``mmap`` and unmaps it on ``free``, so the next
    step takes a page fault for every page it writes again: measured 0.35-0.45 ms a MB on this
    project's 2-core machine (a virtual one), 15-20 % of a vgg8b step on one core. With no ``mmap``
    for blocks and no trimming of the heap, freed blocks are reused as they are (the peak resident
    memory of a vgg8b step: within 11 %). Called once by a run's process (``runner.execute``, each
    rank of a layer-parallel run) and by the benchmarks, for every side they time; not on import (a
    notebook's memory is its own business). Returns True where it applied (glibc), False elsewhere.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def gpu_count() -> int:
    """CUDA devices this process can use (0 without CuPy)."""
    cupy = _load_cupy()
    return 0 if cupy is None else int(cupy.cuda.runtime.getDeviceCount())


def get_backend(device: str = "auto", index: int | None = None) -> Backend:
    """Choose the array module: ``auto`` (GPU when usable, else CPU), ``cpu`` or ``gpu``.

    ``index``: on a machine with several GPUs, use device ``index % count`` (made current for this
    thread): one per process of a layer-parallel run.
    """
    if device == "cpu":
        return NUMPY
    if device not in ("auto", "gpu"):
        raise BackendError(f"unknown device {device!r}; choose auto, cpu or gpu")
    cupy = _load_cupy()
    if cupy is not None:
        if index is not None:
            cupy.cuda.Device(index % max(1, gpu_count())).use()
        return Backend("cupy", cupy)
    if device == "gpu":
        raise BackendError(
            f"--device gpu needs CuPy and a CUDA device, but {_cupy_error}; "
            "install the 'gpu' extra or use --device cpu"
        )
    return NUMPY
