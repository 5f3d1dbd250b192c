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

import math

from bioplaus.backend import get_array_module


def maxpool2d_forward(x, k: int = 2):
    """``x (N, C, H, W)`` -> ``out (N, C, H//k, W//k)``, cache."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    Ho, Wo = H // k, W // k
    # one strided view per window offset (row-major order): no transposed copy of x is made
    views = [x[:, :, p : Ho * k : k, q : Wo * k : k] for p in range(k) for q in range(k)]  # (N, C, Ho, Wo)
    idx_dtype = xp.uint8 if k * k < 256 else xp.int64
    out = views[0].copy()  # (N, C, Ho, Wo)
    idx = xp.zeros((N, C, Ho, Wo), dtype=idx_dtype)
    for j in range(1, k * k):
        later = views[j] > out  # strictly greater: ties keep the first maximum, as argmax
        xp.copyto(idx, idx_dtype(j), where=later)
        xp.maximum(out, views[j], out=out)  # also propagates NaN, as PyTorch
    return out, (idx, x.shape, k)


def maxpool2d_backward(dout, cache):
    """``dout (N, C, Ho, Wo)`` -> ``dx (N, C, H, W)``."""
    xp = get_array_module(dout)
    idx, shape, k = cache
    Ho, Wo = dout.shape[2], dout.shape[3]
    dx = xp.zeros(shape, dtype=dout.dtype)
    for p in range(k):
        for q in range(k):
            xp.copyto(dx[:, :, p : Ho * k : k, q : Wo * k : k], dout, where=idx == p * k + q)
    return dx


def _pool_out(size: int, k: int, pad: int) -> int:
    return (size + 2 * pad - k) // k + 1


def avgpool2d_forward(x, window=(2, 2), pad=(0, 0)):
    """``x (N, C, H, W)`` -> ``out (N, C, Ho, Wo)``, cache; stride = window, zeros counted."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    kh, kw = window
    ph, pw = pad
    Ho, Wo = _pool_out(H, kh, ph), _pool_out(W, kw, pw)
    if ph or pw:
        xpad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
        xpad[:, :, ph : ph + H, pw : pw + W] = x
    else:
        xpad = x
    # sum each window's columns, then its rows: two single-axis reductions beat one over axes (3, 5)
    rows = xpad[:, :, : Ho * kh, : Wo * kw].reshape(N, C, Ho * kh, Wo, kw).sum(axis=4)  # (N, C, Ho*kh, Wo)
    out = rows.reshape(N, C, Ho, kh, Wo).sum(axis=3)  # (N, C, Ho, Wo)
    out *= out.dtype.type(1.0 / (kh * kw))
    return out, (x.shape, (kh, kw), (ph, pw))


def avgpool2d_backward(dout, cache, add_to=None, out=None):
    """``dout (N, C, Ho, Wo)`` -> ``dx (N, C, H, W)``.

    ``add_to``: an array of x's shape to accumulate ``dx`` into, in place (then returned); ``out``: an
    array of x's shape the caller no longer needs, overwritten with ``dx`` (then returned). Without
    padding neither makes an array of x's size (peak memory).
    """
    xp = get_array_module(dout)
    shape, (kh, kw), (ph, pw) = cache
    N, C, H, W = shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    g = dout * dout.dtype.type(1.0 / (kh * kw))  # (N, C, Ho, Wo)
    if out is not None:
        if (ph, pw) == (0, 0) and (Ho * kh, Wo * kw) == (H, W) and out.flags.c_contiguous:
            out.reshape(N, C, Ho, kh, Wo, kw)[...] = g[:, :, :, None, :, None]
        else:
            out[...] = 0
            avgpool2d_backward(dout, cache, add_to=out)
        return out
    if add_to is not None:
        if (ph, pw) == (0, 0) and (Ho * kh, Wo * kw) == (H, W) and add_to.flags.c_contiguous:
            t6 = add_to.reshape(N, C, Ho, kh, Wo, kw)  # a view: each window's kh x kw block
            t6 += g[:, :, :, None, :, None]
        else:
            add_to += avgpool2d_backward(dout, cache)
        return add_to
    up = xp.empty((N, C, Ho * kh, Wo * kw), dtype=dout.dtype)  # the padded input's grid
    up.reshape(N, C, Ho, kh, Wo, kw)[...] = g[:, :, :, None, :, None]  # one broadcast write, no repeats
    if (ph, pw) == (0, 0) and (Ho * kh, Wo * kw) == (H, W):
        return up
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype)
    hh, ww = min(H, Ho * kh - ph), min(W, Wo * kw - pw)  # input rows/columns some window covers
    dx[:, :, :hh, :ww] = up[:, :, ph : ph + hh, pw : pw + ww]
    return dx


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
