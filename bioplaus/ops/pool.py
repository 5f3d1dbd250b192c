"""Max pooling, average pooling and the authors' rule for sizing the pred decoder's pooling.

Max pool (window = stride = k, floor):
    out[n, c, i, j] = max_{0<=p,q<k} x[n, c, k*i + p, k*j + q]
    backward: the whole gradient goes to ONE element per window, the first maximum in row-major
    order (as PyTorch).

Average pool (window = stride = (kh, kw), symmetric zero padding (ph, pw), padded zeros counted):
    out[n, c, i, j] = 1/(kh*kw) * sum_{p<kh, q<kw} xpad[n, c, kh*i + p, kw*j + q]
    out size = floor((H + 2 ph - kh) / kh) + 1   (PyTorch AvgPool2d, count_include_pad=True)
    backward: each window's gradient is spread evenly over its kh*kw positions.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from bioplaus.backend import BLOCK, blocked, device_key, get_array_module


class MaxPoolCache(NamedTuple):
    """What :func:`maxpool2d_backward` needs: each window's argmax (row-major offset), x's shape, k."""

    idx: Any  # (N, C, Ho, Wo), uint8 (int64 for windows of 256 or more)
    shape: tuple  # (N, C, H, W)
    k: int


class AvgPoolCache(NamedTuple):
    """What :func:`avgpool2d_backward` needs: x's shape, the window (= stride) and the padding."""

    shape: tuple  # (N, C, H, W)
    window: tuple  # (kh, kw)
    pad: tuple  # (ph, pw)


def maxpool2d_forward(x, k: int = 2):
    """``x (N, C, H, W)`` -> ``out (N, C, H//k, W//k)``, cache."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    Ho, Wo = H // k, W // k
    if k == 2:
        out = xp.empty((N, C, Ho, Wo), dtype=x.dtype)
        idx = xp.empty((N, C, Ho, Wo), dtype=xp.uint8)

        def pool_samples(lo: int, hi: int) -> None:
            _maxpool2x2(xp, x[lo:hi, :, : 2 * Ho, : 2 * Wo], out[lo:hi], idx[lo:hi])

        blocked(xp, N, pool_samples, block=BLOCK // (C * H * W) or 1)  # bounded temporaries, both cores
        return out, MaxPoolCache(idx, x.shape, k)
    # one strided view per window offset (row-major order): no transposed copy of x is made
    views = [x[:, :, p : Ho * k : k, q : Wo * k : k] for p in range(k) for q in range(k)]  # (N, C, Ho, Wo)
    idx_dtype = xp.uint8 if k * k < 256 else xp.int64
    out = views[0].copy()  # (N, C, Ho, Wo)
    idx = xp.zeros((N, C, Ho, Wo), dtype=idx_dtype)
    for j in range(1, k * k):
        later = views[j] > out  # strictly greater: ties keep the first maximum, as argmax
        xp.copyto(idx, idx_dtype(j), where=later)
        xp.maximum(out, views[j], out=out)  # also propagates NaN, as PyTorch
    return out, MaxPoolCache(idx, x.shape, k)


def _maxpool2x2(xp, x, out, idx) -> None:
    """Fills ``out, idx``: the 2x2 case in two pairwise steps (the model's only pool), the larger of
    each pair of columns, then of each pair of rows. Strict comparisons keep the first maximum of a
    row, then the first row holding the maximum: the first in row-major order, as the general case."""
    right = x[:, :, :, 1::2] > x[:, :, :, 0::2]  # (N, C, H, W/2)
    rows = xp.maximum(x[:, :, :, 0::2], x[:, :, :, 1::2])  # (N, C, H, W/2), propagates NaN
    lower = rows[:, :, 1::2] > rows[:, :, 0::2]  # (N, C, H/2, W/2)
    xp.maximum(rows[:, :, 0::2], rows[:, :, 1::2], out=out)  # (N, C, H/2, W/2)
    idx[...] = xp.where(lower, right[:, :, 1::2], right[:, :, 0::2])  # column in the window
    idx += lower.astype(xp.uint8) * xp.uint8(2)  # row-major offset p*2 + q


def maxpool2d_backward(dout, cache):
    """``dout (N, C, Ho, Wo)`` -> ``dx (N, C, H, W)``."""
    xp = get_array_module(dout)
    idx, shape, k = cache
    N, C, H, W = shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    covered = (H, W) == (Ho * k, Wo * k)
    dx = xp.empty(shape, dtype=dout.dtype) if covered else xp.zeros(shape, dtype=dout.dtype)

    def scatter(lo: int, hi: int) -> None:  # every covered position written once: no zeroing pass
        d, i = dout[lo:hi], idx[lo:hi]
        for p in range(k):
            for q in range(k):
                xp.multiply(d, i == p * k + q, out=dx[lo:hi, :, p : Ho * k : k, q : Wo * k : k])

    blocked(xp, N, scatter, block=BLOCK // (C * H * W) or 1)
    return dx


def _pool_out(size: int, k: int, pad: int) -> int:
    return (size + 2 * pad - k) // k + 1


def _window_matrix(xp, size: int, k: int, pad: int, dtype, transpose: bool = False):
    """``(size, out)`` 0/1 matrix: input position i lies in window ``(i + pad) // k`` (if that window
    exists); padded positions are zeros and add nothing, so they need no row. ``transpose``: ``(out, size)``.
    Built once per shape and device (a training step then moves nothing to the device)."""
    return _cached_window_matrix(xp, device_key(xp), size, k, pad, np.dtype(dtype), transpose)


@functools.lru_cache(maxsize=128)
def _cached_window_matrix(xp, device, size: int, k: int, pad: int, dtype, transpose: bool):
    """``device`` is part of the key only: each GPU of a process gets its own copy."""
    out = _pool_out(size, k, pad)
    i = np.arange(size)
    j = (i + pad) // k
    inside = j < out
    M = np.zeros((size, out))
    M[i[inside], j[inside]] = 1.0
    return xp.asarray(M.T if transpose else M, dtype=dtype)


_ROWS_BYTES = 8 * 2**20  # avgpool's backward builds its result this many bytes at a time when adding


def avgpool2d_forward(x, window=(2, 2), pad=(0, 0)):
    """``x (N, C, H, W)`` -> ``out (N, C, Ho, Wo)``, cache; stride = window, zeros counted.

    Computed as two matrix products with 0/1 window matrices, ``out = Ph^T x Pw / (kh kw)``: the
    columns of each window are summed by one GEMM over all rows, then the rows by a batched one
    (far faster than summing short inner axes; the padding needs no padded copy).
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    kh, kw = window
    ph, pw = pad
    Ho, Wo = _pool_out(H, kh, ph), _pool_out(W, kw, pw)
    if (kw, pw) == (1, 0):
        cols = x.reshape(N * C, H, W)  # nothing to sum along the width
    else:
        cols = (x.reshape(N * C * H, W) @ _window_matrix(xp, W, kw, pw, x.dtype)).reshape(N * C, H, Wo)
    out = xp.matmul(_window_matrix(xp, H, kh, ph, x.dtype, transpose=True), cols)  # (N*C, Ho, Wo)
    out *= out.dtype.type(1.0 / (kh * kw))
    return out.reshape(N, C, Ho, Wo), AvgPoolCache(x.shape, (kh, kw), (ph, pw))


def avgpool2d_backward(dout, cache, add_to=None, out=None):
    """``dout (N, C, Ho, Wo)`` -> ``dx (N, C, H, W)``: ``dx = Ph dout Pw^T / (kh kw)``.

    ``add_to``: a contiguous array of x's shape to accumulate ``dx`` into, in place (then returned);
    ``out``: a contiguous array of x's shape the caller no longer needs, overwritten with ``dx``
    (then returned). Neither makes an array of x's size (peak memory).
    """
    xp = get_array_module(dout)
    shape, (kh, kw), (ph, pw) = cache
    N, C, H, W = shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    g = dout.reshape(N * C, Ho, Wo) * dout.dtype.type(1.0 / (kh * kw))
    rows = xp.matmul(_window_matrix(xp, H, kh, ph, dout.dtype), g)  # (N*C, H, Wo): each row's window sums
    rows = rows.reshape(N * C * H, Wo)
    PwT = _window_matrix(xp, W, kw, pw, dout.dtype, transpose=True)  # (Wo, W)
    target = add_to if add_to is not None else out
    if target is None:
        return (rows @ PwT).reshape(shape)
    if not target.flags.c_contiguous:
        raise ValueError("avgpool2d_backward: add_to/out must be contiguous")
    flat = target.reshape(N * C * H, W)  # a view
    if add_to is None:
        xp.matmul(rows, PwT, out=flat)
        return target
    step = max(1, _ROWS_BYTES // (W * dout.dtype.itemsize))
    for r0 in range(0, rows.shape[0], step):  # bounded temporaries: add block by block
        flat[r0 : r0 + step] += rows[r0 : r0 + step] @ PwT
    return target


def decoder_pool_shape(channels: int, size: int, dim_in_decoder: int):
    """The authors' pooling for a pred/sim-bpf head on a (channels, size, size) feature map.

    Doubles the window along height, then width, until ``channels * H' * W' <= dim_in_decoder``
    (or the window covers the map), pads symmetrically so the output side is ceil(size/window).
    Returns ``(window, pad, out_hw)``: ``window = (1, 1), pad = (0, 0)`` means no pooling.
    """
    ks_h = ks_w = 1
    dim_h = dim_w = size
    d = channels * size * size
    while d > dim_in_decoder and ks_h < size:
        ks_h *= 2
        dim_h = math.ceil(size / ks_h)
        d = channels * dim_h * dim_w
        if d > dim_in_decoder:
            ks_w *= 2
            dim_w = math.ceil(size / ks_w)
            d = channels * dim_h * dim_w
    if ks_h > 1 or ks_w > 1:
        pad_h = (ks_h * (dim_h - size // ks_h)) // 2
        pad_w = (ks_w * (dim_w - size // ks_w)) // 2
    else:
        pad_h = pad_w = 0
    out_hw = (_pool_out(size, ks_h, pad_h), _pool_out(size, ks_w, pad_w))
    return (ks_h, ks_w), (pad_h, pad_w), out_hw
