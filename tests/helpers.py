"""Shared test helpers: float64 central finite differences, the relative-error metric, and the op
gradient check.

:func:`gradcheck` uses the scalar objective ``sum(out * R)`` with a fixed random ``R``. The analytic
gradient is computed on the array module under test (``xp``); the finite differences on NumPy.
"""

from __future__ import annotations

import numpy as np


def numerical_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``x`` (perturbed in place, restored).

    ``f`` takes no arguments and reads ``x``; ``x`` must be a float64 NumPy array.
    """
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = float(f())
        flat[i] = old - eps
        fm = float(f())
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def rel_error(a, b) -> float:
    """max|a - b| / max(1e-12, max(|a| + |b|))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-12, float(np.max(np.abs(a) + np.abs(b)))))


TOL = 1e-7


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def rand(rng, *shape):
    return rng.standard_normal(shape)


def away_from_zero(rng, *shape, margin=0.1):
    """Values with |v| >= margin, so ReLU-like kinks are never crossed by finite differences."""
    v = rng.standard_normal(shape)
    return np.sign(v) * (margin + np.abs(v))


def xp_or_np(like, a):
    return np.asarray(a) if isinstance(like, np.ndarray) else __import__("cupy").asarray(a)


def gradcheck(xp, forward, backward, args, wrt, seed=0, tol=TOL, eps=1e-6):
    """Compare ``backward`` (on ``xp``) with central differences of ``sum(forward(args) * R)``.

    ``forward(*arrays) -> (out, cache)``; ``backward(dout, cache) -> tuple of grads`` in ``wrt`` order.
    """
    out, cache = forward(*[xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args])
    R = np.random.default_rng(seed + 1000).standard_normal(out.shape)
    grads = backward(xp.asarray(R), cache)
    for k, i in enumerate(wrt):
        assert isinstance(grads[k], xp.ndarray)
        assert grads[k].dtype == np.float64
        num = numerical_grad(lambda: np.sum(host(forward(*args)[0]) * R), args[i], eps=eps)
        err = rel_error(host(grads[k]), num)
        assert err < tol, f"gradient {k} (argument {i}): rel error {err:.2e}"
    return out, grads


def naive_conv(x, W, b, stride, pad):
    """The convolution as its definition reads, one output position at a time (float64 reference)."""
    N, _, H, Wd = x.shape
    F, _, kh, kw = W.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - kh) // stride + 1, (Wd + 2 * pad - kw) // stride + 1
    out = np.zeros((N, F, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            patch = xpad[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.einsum("ncpq,fcpq->nf", patch, W)
    if b is not None:
        out += b[None, :, None, None]
    return out


# ------------------------------------------------------------------------------ blocks
def block_forward(x, p, running, spec, train: bool, mask, slope: float):
    """A one-tap block's forward (its kind's) as ``(h, o, cache, new_running)``; ``mask``: None, one
    mask, or the block's tuple of masks."""
    masks = mask if mask is None or isinstance(mask, tuple) else (mask,)
    hs, _inputs, o, cache, new_running = spec.kind.forward(x, p, running, spec, train, masks, slope)
    assert len(hs) == 1  # one tap: the block's h
    return hs[0], o, cache, new_running


def block_series(feedback: bool = True) -> tuple:
    """What the tests' made-up logs declare for a block, whatever their variant: a dense block's norms, a pred
    head's statistics (a bpf one's with ``feedback``), a bpf decoder's fa_angle in any case, a learned sim
    head's loss, and the probe's angle."""
    from bioplaus.heads import PredHead, SimHead
    from bioplaus.kinds import DENSE
    from bioplaus.models import BlockSpec
    from bioplaus.probes import unique
    from bioplaus.train import BP_ANGLE

    return unique((*DENSE.probes(BlockSpec("fc1", "dense", 8, 8)), *PredHead(feedback=feedback).probes(),
                   *PredHead(feedback=True).probes(), *SimHead(learned=True).probes(), BP_ANGLE))


def the_tap(spec):
    """The only tap of a dense or conv block (where its heads read h)."""
    (tap,) = spec.kind.taps(spec)
    return tap


# ------------------------------------------------------------------------------ pinned arithmetic
# Numbers stored in the repository (golden runs, a checkpoint of an older bioplaus) are compared bit for
# bit; float32 results depend on the CPU's kernels (OpenBLAS picks its GEMM by CPU model, NumPy its
# vector loops by instruction set) and on thread counts. These settings pin them on any x86-64 machine
# with AVX2 (Intel or AMD): OpenBLAS's Haswell kernels, NumPy's AVX2 loops, one thread.
PINNED_ENV = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


def pinned_env() -> dict:
    """The environment for a subprocess whose arithmetic matches the stored numbers (see PINNED_ENV)."""
    import os
    import subprocess
    import sys

    probe = ("from numpy._core._multiarray_umath import __cpu_dispatch__ as d; "
             "print(' '.join(t for t in d if '512' in t or t == 'X86_V4'))")
    wide = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False).stdout.strip()
    env = dict(os.environ, **PINNED_ENV)
    if wide:
        env["NPY_DISABLE_CPU_FEATURES"] = wide  # NumPy's AVX-512 loops off: its AVX2 ones, as recorded
    return env


def pinned_unavailable() -> str | None:
    """Why the pinned arithmetic cannot run here (another CPU family, another BLAS), or None."""
    import subprocess
    import sys

    probe = ("from threadpoolctl import threadpool_info; import numpy; "
             "from numpy._core._multiarray_umath import __cpu_features__ as f; "
             "print([i.get('architecture') for i in threadpool_info() if i['user_api'] == 'blas'], f.get('AVX2'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=pinned_env(),
                         check=False)
    if out.returncode != 0:
        return f"cannot pin the arithmetic here: {out.stderr.strip().splitlines()[-1:]}"
    if "'Haswell'" not in out.stdout or "True" not in out.stdout:
        return f"the stored numbers need OpenBLAS's Haswell kernels and AVX2; here: {out.stdout.strip()}"
    return None
