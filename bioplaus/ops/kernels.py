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

import numpy as np

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
    if name == "channel_sum":
        return R("T x", "T out", "x", "a + b", "out = a", "0", "bioplaus_channel_sum")
    if name == "channel_sum_sq_dev":  # sum of (x - mu)^2 with mu = total * inv_m (no centred copy)
        return R("T x, T total, T inv_m", "T out", "(x - total * inv_m) * (x - total * inv_m)", "a + b", "out = a",
                 "0", "bioplaus_channel_sum_sq_dev")
    if name == "bn_stats":
        # per channel: mu = sum / M; var = sum_sq_dev / M; the running averages (unbiased variance);
        # inv_std = 1 / sqrt(var + eps)          (bn_act's dozen small passes over (C,) in one)
        return E("T total, T sq, T running_mean, T running_var, T inv_m, T unbias, T momentum, T eps",
                 "T mu, T inv_std, T new_mean, T new_var",
                 "mu = total * inv_m; T var = sq * inv_m; "
                 "new_mean = ((T)1 - momentum) * running_mean + momentum * mu; "
                 "new_var = ((T)1 - momentum) * running_var + momentum * (var * unbias); "
                 "inv_std = (T)1 / sqrt(var + eps);",
                 "bioplaus_bn_stats")
    if name == "bn_act_dbeta":  # sum of δz = δh · φ'(z) per channel
        return R("T dh, T xhat, T gamma, T beta, T slope", "T out", "bp_dz(dh, xhat, gamma, beta, slope)",
                 "a + b", "out = a", "0", "bioplaus_bn_act_dbeta", preamble=_PREAMBLE)
    if name == "bn_act_dgamma":  # sum of δz · xhat per channel
        return R("T dh, T xhat, T gamma, T beta, T slope", "T out", "bp_dz(dh, xhat, gamma, beta, slope) * xhat",
                 "a + b", "out = a", "0", "bioplaus_bn_act_dgamma", preamble=_PREAMBLE)
    if name == "bn_act_backward_train":
        # δa = gamma · inv_std · (δz − xhat · dgamma / M − dbeta / M)
        return E("T dh, T xhat, T gamma, T beta, T slope, T dgamma, T dbeta, T inv_std, T inv_m", "T da",
                 "T dz = bp_dz(dh, xhat, gamma, beta, slope); "
                 "da = (dz - xhat * (dgamma * inv_m) - dbeta * inv_m) * (gamma * inv_std);",
                 "bioplaus_bn_act_backward_train", preamble=_PREAMBLE)
    if name == "bn_act_backward_eval":  # δa = gamma · inv_std · δz
        return E("T dh, T xhat, T gamma, T beta, T slope, T inv_std", "T da",
                 "da = bp_dz(dh, xhat, gamma, beta, slope) * (gamma * inv_std);",
                 "bioplaus_bn_act_backward_eval", preamble=_PREAMBLE)
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
    if name == "sigmoid_bce":
        # terms = max(z, 0) - z t + log(1 + exp(-|z|));  dz = (sigmoid(z) - t) / E   (losses: ~18 passes)
        return E("T z, T t, T inv_e", "T term, T dz",
                 "T e = exp(-fabs(z)); term = max(z, (T)0) - z * t + log1p(e); "
                 "dz = ((z >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e)) - t) * inv_e;",
                 "bioplaus_sigmoid_bce")
    if name == "mse":  # sq = (p - t)^2;  dp = 2 (p - t) / E
        return E("T p, T t, T two_over_e", "T sq, T dp", "T d = p - t; sq = d * d; dp = d * two_over_e;",
                 "bioplaus_mse")
    if name == "softmax_cross_entropy":
        return _softmax_ce_module(xp)
    raise KeyError(name)


_SOFTMAX_CE = r"""
// One block: each thread takes whole rows of z (N, K); per-row losses are added in a fixed tree,
// so the result is the same on every run.
//   loss = 1/N sum_n [log sum_k exp(z_nk - m_n) - (z_n,y_n - m_n)],  m_n = max_k z_nk
//   dz_nk = (exp(z_nk - m_n) / sum_k exp(z_nk - m_n) - [k == y_n]) / N
template <typename T>
__global__ void softmax_ce(const T* z, const long long* y, T* dz, T* loss, int N, int K) {
    extern __shared__ unsigned char shared_bytes[];
    T* part = reinterpret_cast<T*>(shared_bytes);
    const T inv_n = (T)1 / (T)N;
    T acc = 0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        const T* zr = z + (long long)n * K;
        T* dr = dz + (long long)n * K;
        T m = zr[0];
        for (int k = 1; k < K; ++k) m = max(m, zr[k]);
        T s = 0;
        for (int k = 0; k < K; ++k) s += exp(zr[k] - m);
        const int label = (int)y[n];
        acc += log(s) - (zr[label] - m);
        for (int k = 0; k < K; ++k) dr[k] = (exp(zr[k] - m) / s - (k == label ? (T)1 : (T)0)) * inv_n;
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) loss[0] = part[0] * inv_n;
}
"""
SOFTMAX_CE_THREADS = 256  # a power of two (the tree)


def _softmax_ce_module(xp):
    return xp.RawModule(code=_SOFTMAX_CE, name_expressions=("softmax_ce<float>", "softmax_ce<double>"))


def softmax_cross_entropy(xp, logits, y):
    """``(loss 0-d, dlogits)`` of the mean softmax cross-entropy in one launch (losses.softmax_cross_entropy)."""
    z = xp.ascontiguousarray(logits)
    labels = xp.ascontiguousarray(y.astype(xp.int64, copy=False))
    N, K = z.shape
    dz = xp.empty_like(z)
    loss = xp.empty((), dtype=z.dtype)
    kind = "float" if z.dtype == np.float32 else "double"
    fn = get(xp, "softmax_cross_entropy").get_function(f"softmax_ce<{kind}>")
    fn((1,), (SOFTMAX_CE_THREADS,), (z, labels, dz, loss, np.int32(N), np.int32(K)),
       shared_mem=SOFTMAX_CE_THREADS * z.dtype.itemsize)
    return loss, dz

