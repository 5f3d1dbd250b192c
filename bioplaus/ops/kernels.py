"""Fused kernels for the GPU: one pass over memory where the NumPy code makes several.

Each kernel computes what a sequence of NumPy passes computes (named in its entry), to float32
rounding: on the CPU those passes run over cache-sized blocks (:func:`bioplaus.backend.blocked`),
on a GPU each pass would be one launch streaming the whole feature map through memory, so there
the passes are fused. The kernels are compiled by CuPy on first use, once per device (and cached on
disk), from the array module the caller already holds: this module imports no GPU library.

``z = fma(xhat, gamma, beta)`` is written once (``bp_z``) and used by the forward and the backward
alike, so the backward's ``φ'(z)`` sees exactly the forward's ``z`` (no stored mask).
"""

from __future__ import annotations

import functools

_PREAMBLE = r"""
template <typename T> __device__ __forceinline__ T bp_z(T xhat, T gamma, T beta) {
    return fma(xhat, gamma, beta);
}
template <typename T> __device__ __forceinline__ T bp_dz(T dh, T xhat, T gamma, T beta, T slope) {
    return bp_z(xhat, gamma, beta) > (T)0 ? dh : dh * slope;   // δz = δh · φ'(z)
}
"""


def available(xp) -> bool:
    """True when ``xp`` can compile kernels (CuPy); NumPy then runs its own passes."""
    return hasattr(xp, "ElementwiseKernel")


@functools.cache
def get(xp, name: str):
    """The kernel ``name`` for array module ``xp`` (built once; CuPy compiles per device on first call)."""
    E, R = xp.ElementwiseKernel, xp.ReductionKernel
    if name == "bn_act_forward":
        # xhat = (a - mu) * inv;  z = gamma * xhat + beta;  h = max(z, slope * z)   (bn_act: 3 passes)
        return E("T a, T mu, T inv, T gamma, T beta, T slope", "T xhat, T h",
                 "T xh = (a - mu) * inv; T z = bp_z(xh, gamma, beta); xhat = xh; h = z > (T)0 ? z : z * slope;",
                 "bioplaus_bn_act_forward", preamble=_PREAMBLE)
    if name == "bn_act_dbeta":  # sum of δz = δh · φ'(z) per channel
        return R("T dh, T xhat, T gamma, T beta, T slope", "T out", "bp_dz(dh, xhat, gamma, beta, slope)",
                 "a + b", "out = a", "0", "bioplaus_bn_act_dbeta", preamble=_PREAMBLE)
    if name == "bn_act_dgamma":  # sum of δz · xhat per channel
        return R("T dh, T xhat, T gamma, T beta, T slope", "T out", "bp_dz(dh, xhat, gamma, beta, slope) * xhat",
                 "a + b", "out = a", "0", "bioplaus_bn_act_dgamma", preamble=_PREAMBLE)
    if name == "bn_act_backward_train":
        # δa = gamma / sqrt(var + eps) · (δz − xhat · dgamma / M − dbeta / M)
        return E("T dh, T xhat, T gamma, T beta, T slope, T k, T mean_dz, T scale", "T da",
                 "T dz = bp_dz(dh, xhat, gamma, beta, slope); da = (dz - xhat * k - mean_dz) * scale;",
                 "bioplaus_bn_act_backward_train", preamble=_PREAMBLE)
    if name == "bn_act_backward_eval":  # δa = gamma / sqrt(var + eps) · δz
        return E("T dh, T xhat, T gamma, T beta, T slope, T scale", "T da",
                 "da = bp_dz(dh, xhat, gamma, beta, slope) * scale;",
                 "bioplaus_bn_act_backward_eval", preamble=_PREAMBLE)
    if name == "sum_sq_dev":  # per-channel sum of (x - mu)^2 (batch norm's variance, no centred copy)
        return R("T x, T mu", "T out", "(x - mu) * (x - mu)", "a + b", "out = a", "0", "bioplaus_sum_sq_dev")
    if name in ("adam", "amsgrad"):
        # g = grad + wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²;  [vmax = max(vmax, v)]
        # p -= step_size · m / (sqrt(v) + eps_c)         (optim.Adam.step's passes, one kernel)
        ams = name == "amsgrad"
        return E("T grad, T wd, T b1, T one_minus_b1, T b2, T one_minus_b2, T step_size, T eps_c",
                 "T p, T m, T v" + (", T vmax" if ams else ""),
                 "T g = wd != (T)0 ? p * wd + grad : grad; "
                 "m = m * b1 + g * one_minus_b1; "
                 "v = v * b2 + g * g * one_minus_b2; "
                 + ("vmax = max(vmax, v); p -= m / (sqrt(vmax) + eps_c) * step_size;" if ams
                    else "p -= m / (sqrt(v) + eps_c) * step_size;"),
                 f"bioplaus_{name}")
    raise KeyError(name)
