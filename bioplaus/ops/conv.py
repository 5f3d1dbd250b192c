"""2-D convolution (cross-correlation, PyTorch layout ``W (F, C, kh, kw)``, NCHW images).

Forward:   a[n, f, i, j] = b[f] + sum_{c, p, q} W[f, c, p, q] * xpad[n, c, s*i + p, s*j + q]
Backward:  dW[f, c, p, q] = sum_{n, i, j} da[n, f, i, j] * xpad[n, c, s*i + p, s*j + q]
           db[f]          = sum_{n, i, j} da[n, f, i, j]
           dxpad[n, c, s*i + p, s*j + q] += sum_f W[f, c, p, q] * da[n, f, i, j]

Implementation: im2col into one buffer ``cols (C*kh*kw, n*Ho*Wo)`` (one copy of a strided window
view of a channel-major padded copy of x), then ONE GEMM ``W2 (F, C*kh*kw) @ cols``; the
backward uses the same buffer for ``dW = da2 @ cols^T`` and ``dcols = W2^T @ da2`` followed by
col2im (one strided add per kernel offset). When the buffer for the whole batch would exceed
:data:`IM2COL_MAX_BYTES`, samples are processed in chunks; the cache then keeps only x itself
(which the caller usually holds anyway: no padded copy of the whole batch is kept) and the backward
rebuilds each chunk's padded copy and columns, and writes each chunk's dx straight into its place,
so the peak memory per layer stays about one chunk above the layer's input and output.

``algorithm``: 3x3 convolutions at stride 1 (every conv of the paper's VGGs and of the sim heads) may
run by Winograd's F(4x4, 3x3) instead (:mod:`bioplaus.ops.winograd`: 4x fewer multiplications, float32
results within about 1e-5 of im2col's), in chunks of the batch as im2col's (on the CPU, chunks whose
largest buffer is about :data:`WINOGRAD_MAX_BYTES`; on a device, the whole batch where it fits).
"im2col" and "winograd" take one for every such convolution; "auto" takes, per device, the one that
measured faster there: on a GPU Winograd (on an H200, cuDNN's Winograd weight gradient took 0.89 ms
where im2col + one GEMM took 1.58 ms), on the CPU a rule per layer shape (:data:`AUTO_RULES`; today's,
``auto-cpu-2``: Winograd from 16 input channels where its tiles save at least 2x the multiplications;
im2col for the first convolutions of 1 or 3 channels and for maps of 2x2 pixels or less). A run
resolves "auto" when it starts and records the result ("auto-cpu-2", "winograd"), so a resume
computes as the run began (:mod:`bioplaus.config`); the golden runs and every log that says "auto" rest on im2col's numbers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from bioplaus.backend import chunk_workers, device_memory_bytes, get_array_module, in_parts, on_device
from bioplaus.ops import winograd
from bioplaus.ops.winograd import WinogradCache

IM2COL_MAX_BYTES = 32 * 2**20  # largest im2col buffer built at once (32 MB measured faster than 64 MB on 2 cores)
# On a GPU each chunk costs a dozen launches and small GEMMs fill the device poorly: chunks there are
# as large as this share of the device's memory allows (the whole batch for the paper's nets), for
# im2col and Winograd alike.
DEVICE_IM2COL_SHARE = 1 / 16
DEVICE_IM2COL_MAX_BYTES = 2 * 2**30
# Winograd on the CPU: chunks whose largest buffer stays near the caches (measured below), but of at
# least this many tiles, or the t² GEMMs get too thin to run at the matmul rate (a 4x4 map is one tile).
WINOGRAD_MAX_BYTES = 8 * 2**20
WINOGRAD_MIN_TILES = 256
WINOGRAD_TILE = 4  # F(4x4, 3x3); 2 is F(2x2, 3x3): 2.25x fewer multiplications, about 20x smaller rounding error

# What "auto" computes a 3x3 stride-1 convolution with, per device. A run resolves "auto" once, when
# it starts, and records the result (a versioned rule, or "winograd"), so a resumed run computes as it
# began whatever this table says later. A rule: Winograd F(4x4, 3x3) where the convolution has at
# least ``min_in_channels`` input channels and Winograd's tiles make at least ``min_saving`` times
# fewer multiplications than im2col (9 Ho Wo over 36 per 4x4 tile: 4 on maps of a multiple of 4 pixels,
# 3.06 on 7x7 and 14x14, 2.25 on 3x3, 1 on 2x2), im2col elsewhere; ``measured``: what chose it.
AUTO_RULES = {
    "auto-cpu-1": {
        "min_in_channels": 16,
        "min_saving": 3.0,
        "measured": "bench_ops.py --conv-algorithms --threads 1, batch 128 (README, Measured): Winograd 1.4-2.6x "
                    "faster from 32 input channels on maps of 4x4 or more, 0.4-0.75x for the first convs (1 and 3 "
                    "channels), 0.6x at 2x2; at 3x3 0.63-0.93x in the run that chose the rule (1.6-1.7x in a "
                    "later one: kept on im2col); 8 and 16 channels within noise",
    },
    "auto-cpu-2": {  # auto-cpu-1, and 3x3 maps too (2.25x fewer multiplications)
        "min_in_channels": 16,
        "min_saving": 2.0,
        "measured": "bench_ops.py --conv-algorithms --threads 1 and --threads 2, batch 128, quiet (README, "
                    "Measured): at 3x3 maps Winograd 1.41-1.72x faster forward + backward (1.11-1.39x dW only) "
                    "at 128 and 512 channels on 1 and 2 threads, as in the later auto-cpu-1 run; the rest as "
                    "auto-cpu-1",
    },
}
AUTO = {"cpu": "auto-cpu-2", "gpu": "winograd"}  # what "auto" resolves to on each device, today
ALGORITHMS = ("auto", "im2col", "winograd", *AUTO_RULES)


class ConvCache(NamedTuple):
    """What :func:`conv2d_backward` needs: x (chunked) or its columns (one chunk), W, the geometry."""

    x: Any  # (N, C, H, W) when the batch ran in chunks (columns rebuilt per chunk), else None
    cols: Any  # (C*kh*kw, N*Ho*Wo) when the batch ran in one chunk, else None
    W: Any  # (F, C, kh, kw)
    has_b: bool
    stride: int
    pad: int
    shape: tuple  # x's shape (N, C, H, W)
    chunk: int  # samples per chunk


class WinogradConv(NamedTuple):
    """The cache of a convolution that ran by Winograd: the op's own cache and whether b was added."""

    wino: WinogradCache
    has_b: bool

    @property
    def shape(self) -> tuple:  # x's shape (N, C, H, W), as ConvCache.shape
        return self.wino.shape


def _out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _pad_channel_major(x, pad: int):
    """``x (N, C, H, W)`` -> ``xt (C, N, H + 2p, W + 2p)`` contiguous, zero-padded."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    xt = xp.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
    xt[:, :, pad : pad + H, pad : pad + W] = x.transpose(1, 0, 2, 3)
    return xt


def _im2col(xt, kh: int, kw: int, stride: int, Ho: int, Wo: int):
    """``xt (C, n, Hp, Wp)`` -> ``cols (C*kh*kw, n*Ho*Wo)``: one copy of a strided window view
    (faster than kh*kw per-offset copies on a CPU, and one kernel instead of kh*kw on a GPU)."""
    xp = get_array_module(xt)
    C, n = xt.shape[0], xt.shape[1]
    sc, sn, sh, sw = xt.strides
    view = xp.lib.stride_tricks.as_strided(
        xt, shape=(C, kh, kw, n, Ho, Wo), strides=(sc, sh, sw, sn, stride * sh, stride * sw))
    return xp.ascontiguousarray(view).reshape(C * kh * kw, n * Ho * Wo)


def _col2im_add(dxt, dcols, kh: int, kw: int, stride: int, Ho: int, Wo: int) -> None:
    """Accumulate ``dcols (C*kh*kw, n*Ho*Wo)`` into ``dxt (C, n, Hp, Wp)`` in place."""
    C, n = dxt.shape[0], dxt.shape[1]
    d6 = dcols.reshape(C, kh, kw, n, Ho, Wo)
    hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    for p in range(kh):
        for q in range(kw):
            dxt[:, :, p : p + hs : stride, q : q + ws : stride] += d6[:, p, q]


def _columns(x, kh: int, kw: int, stride: int, pad: int, Ho: int, Wo: int):
    """``x (n, C, H, W)`` -> ``cols (C*kh*kw, n*Ho*Wo)``: a padded channel-major copy, then its columns."""
    return _im2col(_pad_channel_major(x, pad), kh, kw, stride, Ho, Wo)


def _columns_to_image(dcols, dx, kh: int, kw: int, stride: int, pad: int, Ho: int, Wo: int) -> None:
    """Writes ``dx (n, C, H, W)`` (a contiguous array or slice) from ``dcols (C*kh*kw, n*Ho*Wo)``:
    each input position receives the sum of the columns that read it."""
    xp = get_array_module(dcols)
    n, C, H, Wd = dx.shape
    dxt = xp.zeros((C, n, H + 2 * pad, Wd + 2 * pad), dtype=dcols.dtype)  # this chunk only
    _col2im_add(dxt, dcols, kh, kw, stride, Ho, Wo)
    dx[...] = dxt[:, :, pad : pad + H, pad : pad + Wd].transpose(1, 0, 2, 3)


def _to_maps(xp, src, dst) -> None:
    """``dst = src`` with the first two axes swapped (``src (A, B, h, w)``, ``dst (B, A, h, w)``): a strided copy,
    split along ``dst``'s first axis among the CPU's threads (NumPy copies on one core; the same values)."""
    def copy(lo: int, hi: int) -> None:
        dst[lo:hi] = src[:, lo:hi].transpose(1, 0, 2, 3)

    in_parts(xp, dst.shape[0], copy, dst.size)


def _add_bias(xp, out, b) -> None:
    """``out += b`` per channel of ``out (N, F, Ho, Wo)``, sample by sample on the CPU's threads (the same sums)."""
    bias = b.reshape(1, -1, 1, 1)

    def add(lo: int, hi: int) -> None:
        out[lo:hi] += bias

    in_parts(xp, out.shape[0], add, out.size)


def _bias_grad(dout):
    """``db = sum of dout over n, i, j`` (F,). On a device: along each map's contiguous positions
    first, then over the batch (one reduction over axes (0, 2, 3) strides through memory)."""
    if on_device(get_array_module(dout)):
        return dout.reshape(dout.shape[0], dout.shape[1], -1).sum(axis=2).sum(axis=0)
    return dout.sum(axis=(0, 2, 3))


def _device_limit(xp) -> int:
    return int(min(DEVICE_IM2COL_MAX_BYTES, DEVICE_IM2COL_SHARE * device_memory_bytes(xp)))


def _chunk_size(xp, N: int, rows: int, pixels: int, itemsize: int) -> int:
    per_sample = rows * pixels * itemsize
    limit = _device_limit(xp) if on_device(xp) else IM2COL_MAX_BYTES
    return max(1, min(N, limit // max(per_sample, 1)))


def winograd_chunk(x_shape: tuple, F: int, pad: int, itemsize: int, device_limit: int | None = None) -> int:
    """Samples per chunk of a Winograd convolution: on a device (``device_limit``: its byte limit),
    as many as the limit allows (the whole batch for the paper's nets); on the CPU (None), chunks
    whose largest buffer is about :data:`WINOGRAD_MAX_BYTES` but that hold at least
    :data:`WINOGRAD_MIN_TILES` tiles (and at most :data:`IM2COL_MAX_BYTES`)."""
    N = x_shape[0]
    per_sample = winograd.sample_bytes(x_shape, F, pad, WINOGRAD_TILE, itemsize)
    if device_limit is not None:
        return max(1, min(N, device_limit // per_sample))
    tiles = winograd.tiles_per_sample(x_shape, pad, WINOGRAD_TILE)
    chunk = max(WINOGRAD_MAX_BYTES // per_sample, -(-WINOGRAD_MIN_TILES // tiles))
    return max(1, min(N, chunk, IM2COL_MAX_BYTES // per_sample))


def resolve_algorithm(algorithm: str, gpu: bool) -> str:
    """What ``algorithm`` means on a GPU (``gpu``) or the CPU: "auto" -> that device's entry of
    :data:`AUTO`; any other name is itself. A run records this, not "auto" (module docstring)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"conv2d: unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    return AUTO["gpu" if gpu else "cpu"] if algorithm == "auto" else algorithm


def takes_winograd(x_shape: tuple, W_shape: tuple, stride: int, pad: int, algorithm: str, gpu: bool) -> bool:
    """True where a convolution runs by Winograd on a GPU (``gpu``) or the CPU: a 3x3 stride-1 kernel,
    and "winograd", or a rule of :data:`AUTO_RULES` that takes it for this shape ("auto": the rule
    of that device)."""
    name = resolve_algorithm(algorithm, gpu)
    if name == "im2col" or not winograd.applies(W_shape, stride):
        return False
    if name == "winograd":
        return True
    rule = AUTO_RULES[name]
    return x_shape[1] >= rule["min_in_channels"] and winograd_saving(x_shape, pad) >= rule["min_saving"]


def winograd_saving(x_shape: tuple, pad: int) -> float:
    """How many times fewer multiplications Winograd's F(4x4, 3x3) makes than im2col for a 3x3 stride-1
    convolution of ``x_shape``: 9 per output pixel, against 36 per 4x4 tile (a tile cut by the map's
    edge costs as much as a whole one)."""
    Ho, Wo = x_shape[2] + 2 * pad - 2, x_shape[3] + 2 * pad - 2
    return 9 * Ho * Wo / ((WINOGRAD_TILE + 2) ** 2 * winograd.tiles_per_sample(x_shape, pad, WINOGRAD_TILE))


def uses_winograd(xp, x_shape: tuple, W_shape: tuple, stride: int, pad: int, algorithm: str = "auto") -> bool:
    """:func:`takes_winograd` on ``xp``'s device: where :func:`conv2d_forward` runs by Winograd."""
    return takes_winograd(x_shape, W_shape, stride, pad, algorithm, on_device(xp))


def workspace_bytes(x_shape: tuple, W_shape: tuple, stride: int, pad: int, algorithm: str, gpu: bool,
                    itemsize: int, device_limit: int = DEVICE_IM2COL_MAX_BYTES) -> int:
    """The most memory a convolution's forward and backward hold at once besides x, W, the output
    and their gradients: one chunk's columns (im2col, made twice over in the backward), or one chunk's
    buffers for each chunk running at once (Winograd, with what the forward keeps for the backward).
    For the memory budget."""
    N, C, H, Wd = x_shape
    F, _, kh, kw = W_shape
    limit = device_limit if gpu else None
    if takes_winograd(x_shape, W_shape, stride, pad, algorithm, gpu):
        chunk = winograd_chunk(x_shape, F, pad, itemsize, limit)
        workers = 1 if gpu else chunk_workers(np, -(-N // chunk))  # chunks side by side, each its own buffers
        return winograd.buffer_bytes(x_shape, F, pad, WINOGRAD_TILE, itemsize, chunk, workers)
    Ho, Wo = _out_size(H, kh, stride, pad), _out_size(Wd, kw, stride, pad)
    per_sample = C * kh * kw * Ho * Wo * itemsize
    chunk = max(1, min(N, (limit or IM2COL_MAX_BYTES) // per_sample))
    return 2 * chunk * per_sample


def conv2d_forward(x, W, b=None, stride: int = 1, pad: int = 0, algorithm: str = "auto"):
    """``x (N, C, H, W)``, ``W (F, C, kh, kw)``, ``b (F,)`` or None -> ``a (N, F, Ho, Wo)``, cache.
    ``algorithm``: "auto", "im2col" or "winograd" (module docstring); the backward follows the cache."""
    xp = get_array_module(x)
    N, C, H, Wd = x.shape
    F, C2, kh, kw = W.shape
    if C2 != C:
        raise ValueError(f"conv2d: input has {C} channels but the weights expect {C2}")
    if uses_winograd(xp, x.shape, W.shape, stride, pad, algorithm):
        chunk = winograd_chunk(x.shape, F, pad, x.dtype.itemsize, _device_limit(xp) if on_device(xp) else None)
        out, cache = winograd.winograd_conv3x3_forward(x, W, pad, WINOGRAD_TILE, chunk)  # (N, F, Ho, Wo)
        if b is not None:
            _add_bias(xp, out, b)
        return out, WinogradConv(cache, b is not None)
    Ho, Wo = _out_size(H, kh, stride, pad), _out_size(Wd, kw, stride, pad)
    K = C * kh * kw
    W2 = W.reshape(F, K)  # (F, K)
    chunk = _chunk_size(xp, N, K, Ho * Wo, x.dtype.itemsize)
    out = xp.empty((N, F, Ho, Wo), dtype=x.dtype)
    cols = None
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        cols = a2 = None  # the last chunk's buffers go before this chunk's are made (peak memory)
        cols = _columns(x[n0:n1], kh, kw, stride, pad, Ho, Wo)  # (K, n*Ho*Wo)
        a2 = W2 @ cols  # (F, n*Ho*Wo)
        _to_maps(xp, a2.reshape(F, n1 - n0, Ho, Wo), out[n0:n1])
    del a2
    if b is not None:
        _add_bias(xp, out, b)
    # one chunk: keep the columns for the backward; several: keep only x and rebuild per chunk
    keep = cols if chunk >= N else None
    cache = ConvCache(x if keep is None else None, keep, W, b is not None, stride, pad, x.shape, chunk)
    return out, cache


def conv2d_backward(dout, cache, need_dx: bool = True, overwrite_dout: bool = False):
    """``dout (N, F, Ho, Wo)`` -> ``(dx (N, C, H, W) or None, dW (F, C, kh, kw), db (F,) or None)``.

    ``overwrite_dout=True``: the caller hands over ``dout`` (needed by nothing else); when dx has its
    shape (a same-size convolution), each chunk's dx is written over that chunk of ``dout`` once the
    chunk's own error has been copied out, so no new array of x's size is made (peak memory).
    """
    xp = get_array_module(dout)
    if isinstance(cache, WinogradConv):
        db = _bias_grad(dout) if cache.has_b else None  # (F,) before dout's buffer may take dx
        dx, dW = winograd.winograd_conv3x3_backward(dout, cache.wino, need_dx, overwrite_dout)
        return dx, dW, db
    x, cols, W, has_b, stride, pad, shape, chunk = cache
    N, C = shape[0], shape[1]
    F, _, kh, kw = W.shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    K = C * kh * kw
    W2 = W.reshape(F, K)
    db = _bias_grad(dout) if has_b else None  # (F,)
    dW2 = None
    dx = None
    if need_dx:
        reuse = overwrite_dout and dout.shape == tuple(shape) and dout.flags.c_contiguous
        dx = dout if reuse else xp.empty(shape, dtype=dout.dtype)  # (N, C, H, W)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        if cols is None or chunk < N:
            c = _columns(x[n0:n1], kh, kw, stride, pad, Ho, Wo)  # (K, n*Ho*Wo)
        else:
            c = cols
        d2 = xp.empty((F, (n1 - n0) * Ho * Wo), dtype=dout.dtype)  # (F, n*Ho*Wo)
        _to_maps(xp, dout[n0:n1], d2.reshape(F, n1 - n0, Ho, Wo))
        dW2 = d2 @ c.T if dW2 is None else dW2 + d2 @ c.T  # (F, K)
        del c  # a rebuilt chunk's columns can go before dcols is made (peak memory)
        if need_dx:
            dcols = W2.T @ d2  # (K, n*Ho*Wo)
            _columns_to_image(dcols, dx[n0:n1], kh, kw, stride, pad, Ho, Wo)
            del dcols
    return dx, dW2.reshape(W.shape), db


def conv2d_input_grad(dout, W, x_shape, stride: int = 1, pad: int = 0):
    """``dx`` of a convolution with kernel ``W`` for the error ``dout`` (N, F, Ho, Wo):
    ``dxpad[n, c, s*i + p, s*j + q] += sum_f W[f, c, p, q] * dout[n, f, i, j]`` (the x part of
    :func:`conv2d_backward`, for any kernel of W's shape: a rule may pass another matrix than the
    forward one, which then is its business, not this op's). Chunked like the backward."""
    xp = get_array_module(dout)
    N, C = x_shape[0], x_shape[1]
    F, _, kh, kw = W.shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    K = C * kh * kw
    W2 = W.reshape(F, K)
    dx = xp.empty(tuple(x_shape), dtype=dout.dtype)
    chunk = _chunk_size(xp, N, K, Ho * Wo, dout.dtype.itemsize)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        d2 = dout[n0:n1].transpose(1, 0, 2, 3).reshape(F, -1)  # (F, n*Ho*Wo)
        dcols = W2.T @ d2  # (K, n*Ho*Wo)
        _columns_to_image(dcols, dx[n0:n1], kh, kw, stride, pad, Ho, Wo)
        del dcols
    return dx


def conv2d_transpose_forward(h, W, b, x_shape, stride: int = 1, pad: int = 0):
    """The transpose of a convolution (PyTorch's ConvTranspose2d with the kernel ``W (F, C, kh, kw)``
    read as ``(in, out, kh, kw)``): ``h (N, F, Ho, Wo)`` -> ``y (N, C, H, W)`` with
    ``y = conv2d_input_grad(h, W) + b``; ``x_shape`` = (N, C, H, W) picks the output size. Cache."""
    y = conv2d_input_grad(h, W, x_shape, stride, pad)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y, (h, W, b is not None, stride, pad)


def conv2d_transpose_backward(dy, cache):
    """``dy (N, C, H, W)`` -> ``(dh, dW, db)``: the adjoint of the input gradient is the convolution
    itself, ``dh = conv2d(dy, W)``; and ``dW[f, c, p, q] = sum h[n, f, i, j] dypad[n, c, s i + p, s j + q]``,
    the weight gradient of that convolution for the error h."""
    h, W, has_b, stride, pad = cache
    dh, conv_cache = conv2d_forward(dy, W, None, stride, pad)
    _, dW, _ = conv2d_backward(h, conv_cache, need_dx=False)
    db = _bias_grad(dy) if has_b else None
    return dh, dW, db
