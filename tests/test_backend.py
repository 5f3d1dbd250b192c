"""The backend: CPU is NumPy, a missing GPU is one clear sentence, keyed random streams."""

from __future__ import annotations

import numpy as np
import pytest

from bioplaus.backend import BackendError, blocked, cpu_threads, get_array_module, get_backend, gpu_available


def test_cpu_is_numpy():
    be = get_backend("cpu")
    assert be.xp is np and be.name == "numpy" and not be.is_gpu
    assert be.device.startswith("cpu")
    assert get_array_module(np.zeros(2)) is np


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
def test_gpu_without_gpu_raises_a_sentence():
    with pytest.raises(BackendError) as info:
        get_backend("gpu")
    msg = str(info.value)
    assert "--device cpu" in msg and "\n" not in msg
    assert get_backend("auto").xp is np


def test_unknown_device():
    with pytest.raises(BackendError, match="unknown device"):
        get_backend("tpu")


def test_rng_is_keyed():
    be = get_backend("cpu")
    a = be.rng(1, "dropout", 3).random(5)
    b = be.rng(1, "dropout", 3).random(5)
    c = be.rng(1, "dropout", 4).random(5)
    d = be.rng(2, "dropout", 3).random(5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_asarray_to_host_roundtrip():
    be = get_backend("cpu")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = be.to_host(be.asarray(x))
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and np.array_equal(x, y)
    assert be.asarray([1, 2], dtype=np.float64).dtype == np.float64


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="no GPU")
def test_gpu_backend_roundtrip():
    be = get_backend("gpu")
    x = np.arange(6, dtype=np.float32)
    d = be.asarray(x)
    assert isinstance(d, be.xp.ndarray) and get_array_module(d) is be.xp
    assert np.array_equal(be.to_host(d), x)
    r1, r2 = be.rng(1, "a").random(4), be.rng(1, "a").random(4)
    assert np.array_equal(be.to_host(r1), be.to_host(r2))


@pytest.mark.parametrize("n,block", [(0, 4), (1, 4), (7, 4), (64, 4), (1000, 7), (5, 100)])
def test_blocked_covers_each_item_once(n, block):
    """Every item in [0, n) is handed to exactly one call, in blocks of at most ``block``."""
    seen = np.zeros(n, dtype=np.int64)
    sizes = []

    def body(lo, hi):
        seen[lo:hi] += 1
        sizes.append(hi - lo)

    blocked(np, n, body, block=block)
    assert (seen == 1).all()
    assert all(0 < s <= block for s in sizes)


def test_blocked_reraises_a_workers_error():
    def body(lo, hi):
        if lo >= 32:  # a block handed to the second worker
            raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        blocked(np, 64, body, block=4)


def test_thread_limits_are_honoured(monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    cores = cpu_threads()
    assert cores >= 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert cpu_threads() == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "junk")  # not a number: ignored
    assert cpu_threads() == cores


def test_a_run_keeps_freed_memory_for_its_next_step():
    """After ``keep_freed_memory`` (glibc), a large array freed and made again is not faulted in again
    page by page (a fresh process: the setting is the process's)."""
    import subprocess
    import sys

    code = """if True:
        import resource, sys
        import numpy as np
        from bioplaus.backend import keep_freed_memory
        def faults():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(3):
                a = np.empty(16 * 2**20, np.float32)  # 64 MB
                a.fill(1.0)
                del a
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        plain = faults()
        if not keep_freed_memory():
            print("skip"); sys.exit(0)
        faults()  # the heap grows to hold the block once
        print(plain, faults())
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    words = out.stdout.split()
    if words == ["skip"]:
        pytest.skip("not glibc: the allocator keeps its own ways")
    plain, kept = map(int, words)
    # 3 x 64 MB faulted in: at least 96 faults (2 MB pages; 49152 with 4 KB ones), then almost none
    assert plain >= 90 and kept <= plain // 10, (plain, kept)


def test_a_run_process_shortens_the_blas_spin():
    """Importing bioplaus before NumPy sets OpenBLAS's idle spin (the environment, read when NumPy loads
    OpenBLAS); a value already set is kept."""
    import os
    import subprocess
    import sys

    import bioplaus

    code = "import os, bioplaus, numpy; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=120)
    assert out.stdout.strip() == bioplaus.BLAS_SPIN
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env=dict(env, OPENBLAS_THREAD_TIMEOUT="20"))
    assert out.stdout.strip() == "20"
