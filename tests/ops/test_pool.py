"""Max and average pooling vs naive loops and float64 central differences; the decoder's pooling rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import gradcheck, host, rand, rel_error

from bioplaus import ops

# ----------------------------------------------------------------------------- max pool


def naive_maxpool(x, k):
    N, C, H, W = x.shape
    Ho, Wo = H // k, W // k
    out = np.zeros((N, C, Ho, Wo))
    arg = np.zeros((N, C, Ho, Wo, 2), dtype=int)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    best, where = -np.inf, None
                    for p in range(k):
                        for q in range(k):
                            v = x[n, c, i * k + p, j * k + q]
                            if v > best:
                                best, where = v, (i * k + p, j * k + q)
                    out[n, c, i, j] = best
                    arg[n, c, i, j] = where
    return out, arg


@pytest.mark.parametrize("shape,k", [((2, 3, 4, 6), 2), ((1, 2, 5, 7), 2), ((2, 1, 7, 6), 3), ((9, 2, 4, 4), 2)])
def test_maxpool_forward_backward_naive(xp, shape, k, monkeypatch):
    from bioplaus.ops import pool

    monkeypatch.setattr(pool, "BLOCK", 2 * int(np.prod(shape[1:])))  # 2 samples a block: several blocks, threads
    rng = np.random.default_rng(5)
    x = rand(rng, *shape)
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = x[0, 0, 1, 0] = 5.0  # a three-way tie in the first window
    x[-1, -1, 0, 1] = x[-1, -1, 1, 0] = 6.0  # a tie of (0, 1) and (1, 0) above (0, 0): row-major picks (0, 1)
    x[-1, -1, 0, 0] = 1.0
    out, cache = ops.maxpool2d_forward(xp.asarray(x), k)
    ref, arg = naive_maxpool(x, k)
    assert isinstance(out, xp.ndarray)
    assert np.array_equal(host(out), ref)
    dout = rand(rng, *ref.shape)
    dx = host(ops.maxpool2d_backward(xp.asarray(dout), cache))
    expect = np.zeros_like(x)
    N, C, Ho, Wo = ref.shape
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    expect[n, c, arg[n, c, i, j, 0], arg[n, c, i, j, 1]] += dout[n, c, i, j]
    assert np.array_equal(dx, expect)
    assert dx[0, 0, 0, 0] == dout[0, 0, 0, 0] and dx[0, 0, 0, 1] == 0  # tie: first max only


def test_maxpool_gradients(xp):
    rng = np.random.default_rng(6)
    # distinct values well apart, so finite differences never swap the maximum
    x = rng.permutation(2 * 2 * 5 * 4).reshape(2, 2, 5, 4) * 0.01
    gradcheck(
        xp,
        lambda x: ops.maxpool2d_forward(x, 2),
        lambda d, c: (ops.maxpool2d_backward(d, c),),
        [x.astype(np.float64)],
        [0],
    )


# ----------------------------------------------------------------------------- avg pool


def naive_avgpool(x, window, pad):
    kh, kw = window
    ph, pw = pad
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    N, C, Hp, Wp = xpad.shape
    Ho, Wo = (Hp - kh) // kh + 1, (Wp - kw) // kw + 1
    out = np.zeros((N, C, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            out[:, :, i, j] = xpad[:, :, i * kh : i * kh + kh, j * kw : j * kw + kw].sum(axis=(2, 3)) / (kh * kw)
    return out


AVG_CASES = [
    ((2, 3, 4, 4), (2, 2), (0, 0)),
    ((2, 2, 7, 7), (4, 2), (2, 1)),  # needs padding, rectangular window
    ((1, 3, 5, 6), (2, 4), (1, 1)),
    ((2, 1, 28, 28), (8, 4), (4, 0)),  # the MNIST vgg head
    ((1, 2, 3, 3), (1, 1), (0, 0)),  # no pooling
]


@pytest.mark.parametrize("shape,window,pad", AVG_CASES)
def test_avgpool_forward_naive(xp, shape, window, pad):
    x = rand(np.random.default_rng(8), *shape)
    out, _ = ops.avgpool2d_forward(xp.asarray(x), window, pad)
    assert isinstance(out, xp.ndarray)
    assert rel_error(host(out), naive_avgpool(x, window, pad)) < 1e-14


@pytest.mark.parametrize("shape,window,pad", AVG_CASES[:3] + AVG_CASES[4:])
def test_avgpool_gradients(xp, shape, window, pad):
    x = rand(np.random.default_rng(9), *shape)
    gradcheck(
        xp,
        lambda x: ops.avgpool2d_forward(x, window, pad),
        lambda d, c: (ops.avgpool2d_backward(d, c),),
        [x],
        [0],
    )


@pytest.mark.parametrize("shape,window,pad", AVG_CASES)
def test_avgpool_backward_in_place(xp, shape, window, pad, monkeypatch):
    """``out=`` and ``add_to=`` give the plain backward's values, written where asked."""
    from bioplaus.ops import pool

    monkeypatch.setattr(pool, "_ROWS_BYTES", 8 * shape[-1] * 3)  # several blocks in add_to's loop
    rng = np.random.default_rng(10)
    x = xp.asarray(rand(rng, *shape))
    out, cache = ops.avgpool2d_forward(x, window, pad)
    dout = xp.asarray(rand(rng, *out.shape))
    expect = host(ops.avgpool2d_backward(dout, cache))
    buf = xp.asarray(rand(rng, *shape))
    assert ops.avgpool2d_backward(dout, cache, out=buf) is buf
    assert rel_error(host(buf), expect) < 1e-14
    base = rand(rng, *shape)
    acc = xp.asarray(base.copy())
    assert ops.avgpool2d_backward(dout, cache, add_to=acc) is acc
    assert rel_error(host(acc), base + expect) < 1e-14


@pytest.mark.parametrize(
    "channels,size,dim,window,pad,out_hw",
    [
        # worked by hand from the rule in DESIGN / the authors' code
        (128, 32, 4096, (8, 4), (0, 0), (4, 8)),
        (128, 28, 4096, (8, 4), (4, 0), (4, 7)),
        (256, 7, 2048, (4, 2), (2, 1), (2, 4)),
        (1, 4, 4096, (1, 1), (0, 0), (4, 4)),
        (512, 2, 4096, (1, 1), (0, 0), (2, 2)),
        (512, 2, 512, (2, 2), (0, 0), (1, 1)),
    ],
)
def test_decoder_pool_shape(channels, size, dim, window, pad, out_hw):
    got = ops.decoder_pool_shape(channels, size, dim)
    assert got == (window, pad, out_hw)
    out, _ = ops.avgpool2d_forward(np.zeros((1, 1, size, size)), window, pad)
    assert out.shape[2:] == out_hw
    assert out_hw == (math.ceil(size / window[0]), math.ceil(size / window[1]))


def test_decoder_pool_shape_fits_when_possible():
    for channels in (1, 3, 64, 128, 256, 512, 1536):
        for size in (1, 2, 3, 4, 7, 8, 14, 16, 28, 32, 48, 96):
            for dim in (256, 1024, 2048, 4096):
                (kh, _), _, (oh, ow) = ops.decoder_pool_shape(channels, size, dim)
                if channels * oh * ow > dim:  # only when the window already covers the map
                    assert kh >= size
