"""Every op: backward vs float64 central differences, forward vs a naive implementation.

Gradient checks use the scalar objective ``sum(out * R)`` with a fixed random ``R``. The analytic
gradient is computed on the array module under test (``xp``); the finite differences on NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import numerical_grad, rel_error

from bioplaus import ops
from bioplaus.ops import conv as conv_module

TOL = 1e-7


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def rand(rng, *shape):
    return rng.standard_normal(shape)


def away_from_zero(rng, *shape, margin=0.1):
    """Values with |v| >= margin, so ReLU-like kinks are never crossed by finite differences."""
    v = rng.standard_normal(shape)
    return np.sign(v) * (margin + np.abs(v))


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


# ----------------------------------------------------------------------------- dense


@pytest.mark.parametrize("N,D_in,D_out,bias", [(4, 7, 5, True), (1, 3, 2, True), (2, 6, 9, False)])
def test_dense_gradients(xp, N, D_in, D_out, bias):
    rng = np.random.default_rng(N * 100 + D_in)
    x, W, b = rand(rng, N, D_in), rand(rng, D_out, D_in), rand(rng, D_out)
    if bias:
        gradcheck(
            xp,
            lambda x, W, b: ops.dense_forward(x, W, b),
            lambda d, c: ops.dense_backward(d, c),
            [x, W, b],
            [0, 1, 2],
        )
    else:
        gradcheck(
            xp,
            lambda x, W: ops.dense_forward(x, W, None),
            lambda d, c: ops.dense_backward(d, c)[:2],
            [x, W],
            [0, 1],
        )


def test_dense_forward_naive_and_need_dx(xp):
    rng = np.random.default_rng(1)
    x, W, b = rand(rng, 3, 4), rand(rng, 5, 4), rand(rng, 5)
    out, cache = ops.dense_forward(xp.asarray(x), xp.asarray(W), xp.asarray(b))
    naive = np.array([[sum(W[o, i] * x[n, i] for i in range(4)) + b[o] for o in range(5)] for n in range(3)])
    assert isinstance(out, xp.ndarray)
    assert rel_error(host(out), naive) < 1e-14
    dx, dW, db = ops.dense_backward(xp.ones((3, 5)), cache, need_dx=False)
    assert dx is None and dW.shape == (5, 4) and db.shape == (5,)
    _, cache_nb = ops.dense_forward(xp.asarray(x), xp.asarray(W), None)
    db_none = ops.dense_backward(xp.ones((3, 5)), cache_nb)[2]
    assert db_none is None


def test_dense_keeps_float32(xp):
    x = xp.ones((2, 3), dtype=np.float32)
    W = xp.ones((4, 3), dtype=np.float32)
    out, cache = ops.dense_forward(x, W, xp.zeros(4, dtype=np.float32))
    dx, dW, db = ops.dense_backward(out, cache)
    assert out.dtype == dx.dtype == dW.dtype == db.dtype == np.float32


# ----------------------------------------------------------------------------- conv


def naive_conv(x, W, b, stride, pad):
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


CONV_CASES = [
    # N, C, H, W, F, k, stride, pad
    (2, 3, 5, 5, 4, 3, 1, 1),  # the VGG 3x3 pad 1
    (1, 2, 9, 7, 3, 7, 2, 3),  # the STL-10 stem: 7x7 stride 2 pad 3, odd sizes
    (2, 4, 3, 3, 2, 1, 1, 0),  # 1x1
    (3, 2, 4, 6, 2, 3, 2, 0),  # stride 2 without padding, rectangular
    (2, 5, 1, 1, 3, 3, 1, 1),  # 1x1 map with padding
]


@pytest.mark.parametrize("N,C,H,Wd,F,k,stride,pad", CONV_CASES)
def test_conv_forward_naive(xp, N, C, H, Wd, F, k, stride, pad):
    rng = np.random.default_rng(7)
    x, W, b = rand(rng, N, C, H, Wd), rand(rng, F, C, k, k), rand(rng, F)
    out, _ = ops.conv2d_forward(xp.asarray(x), xp.asarray(W), xp.asarray(b), stride, pad)
    assert isinstance(out, xp.ndarray)
    assert rel_error(host(out), naive_conv(x, W, b, stride, pad)) < 1e-13


@pytest.mark.parametrize("N,C,H,Wd,F,k,stride,pad", CONV_CASES)
def test_conv_gradients(xp, N, C, H, Wd, F, k, stride, pad):
    rng = np.random.default_rng(N + C + H)
    x, W, b = rand(rng, N, C, H, Wd), rand(rng, F, C, k, k), rand(rng, F)
    gradcheck(
        xp,
        lambda x, W, b: ops.conv2d_forward(x, W, b, stride, pad),
        lambda d, c: ops.conv2d_backward(d, c),
        [x, W, b],
        [0, 1, 2],
    )


def test_conv_chunked_equals_unchunked(xp, monkeypatch):
    """A tiny im2col budget forces one sample per chunk; results must not change."""
    rng = np.random.default_rng(3)
    x, W, b = rand(rng, 5, 3, 6, 6), rand(rng, 4, 3, 3, 3), rand(rng, 4)
    args = [xp.asarray(a) for a in (x, W, b)]
    out1, c1 = ops.conv2d_forward(*args, 1, 1)
    R = xp.asarray(rand(rng, *out1.shape))
    g1 = ops.conv2d_backward(R, c1)
    monkeypatch.setattr(conv_module, "IM2COL_MAX_BYTES", 1)
    monkeypatch.setattr(conv_module, "DEVICE_IM2COL_MAX_BYTES", 1)
    out2, c2 = ops.conv2d_forward(*args, 1, 1)
    assert c2[-1] == 1  # really chunked, one sample at a time
    g2 = ops.conv2d_backward(R, c2)
    assert rel_error(host(out1), host(out2)) < 1e-14
    for a, b_ in zip(g1, g2):
        assert rel_error(host(a), host(b_)) < 1e-14
    # and the chunked path is itself a correct gradient
    gradcheck(
        xp,
        lambda x, W, b: ops.conv2d_forward(x, W, b, 2, 1),
        lambda d, c: ops.conv2d_backward(d, c),
        [rand(rng, 3, 2, 5, 5), rand(rng, 3, 2, 3, 3), rand(rng, 3)],
        [0, 1, 2],
    )


def test_conv_no_bias_no_dx_float32(xp):
    x = xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4, 4)), dtype=np.float32)
    W = xp.ones((2, 3, 3, 3), dtype=np.float32)
    out, cache = ops.conv2d_forward(x, W, None, 1, 1)
    dx, dW, db = ops.conv2d_backward(out, cache, need_dx=False)
    assert dx is None and db is None
    assert out.dtype == dW.dtype == np.float32 and dW.shape == (2, 3, 3, 3)


def test_conv_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="channels"):
        ops.conv2d_forward(np.ones((1, 2, 3, 3)), np.ones((1, 3, 3, 3)))


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


# ----------------------------------------------------------------------------- batch norm


def naive_bn(x, gamma, beta, rm, rv, train, momentum, eps):
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shp = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    if train:
        mu, var, uvar = x.mean(axis=axes), x.var(axis=axes), x.var(axis=axes, ddof=1)
        new_rm, new_rv = (1 - momentum) * rm + momentum * mu, (1 - momentum) * rv + momentum * uvar
    else:
        mu, var, new_rm, new_rv = rm, rv, rm, rv
    out = (x - mu.reshape(shp)) / np.sqrt(var.reshape(shp) + eps) * gamma.reshape(shp) + beta.reshape(shp)
    return out, new_rm, new_rv


BN_SHAPES = [(6, 4), (2, 3, 3, 2), (1, 2, 3, 3), (5, 3)]


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_forward_naive(xp, shape, train):
    rng = np.random.default_rng(10)
    C = shape[1]
    x = rand(rng, *shape) * 2 + 1
    gamma, beta = rand(rng, C), rand(rng, C)
    rm, rv = rand(rng, C), 0.5 + rng.random(C)
    rm0, rv0 = rm.copy(), rv.copy()
    args = [xp.asarray(a) for a in (x, gamma, beta, rm, rv)]
    out, _, nrm, nrv = ops.batchnorm_forward(*args, train, momentum=0.1, eps=1e-5)
    ref, ref_rm, ref_rv = naive_bn(x, gamma, beta, rm, rv, train, 0.1, 1e-5)
    assert isinstance(out, xp.ndarray)
    assert rel_error(host(out), ref) < 1e-12
    assert rel_error(host(nrm), ref_rm) < 1e-13 and rel_error(host(nrv), ref_rv) < 1e-13
    assert np.array_equal(host(args[3]), rm0) and np.array_equal(host(args[4]), rv0)  # no mutation


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradients(xp, shape, train):
    rng = np.random.default_rng(11)
    C = shape[1]
    x, gamma, beta = rand(rng, *shape), rand(rng, C), rand(rng, C)
    rm, rv = rand(rng, C), 0.5 + rng.random(C)

    def fwd(x, gamma, beta):
        out, cache, _, _ = ops.batchnorm_forward(x, gamma, beta, xp_or_np(x, rm), xp_or_np(x, rv), train)
        return out, cache

    gradcheck(xp, fwd, ops.batchnorm_backward, [x, gamma, beta], [0, 1, 2])


def xp_or_np(like, a):
    return np.asarray(a) if isinstance(like, np.ndarray) else __import__("cupy").asarray(a)


def test_batchnorm_tiny_variance(xp):
    rng = np.random.default_rng(12)
    x = 3.0 + 1e-3 * rand(rng, 8, 3)  # variance 1e-6, below eps = 1e-5
    gamma, beta = rand(rng, 3), rand(rng, 3)
    rm, rv = np.zeros(3), np.ones(3)

    def fwd(x, gamma, beta):
        out, cache, _, _ = ops.batchnorm_forward(x, gamma, beta, xp_or_np(x, rm), xp_or_np(x, rv), True)
        return out, cache

    gradcheck(xp, fwd, ops.batchnorm_backward, [x, gamma, beta], [0, 1, 2], eps=1e-7, tol=1e-6)


# ----------------------------------------------------------------------------- batch norm + φ, fused

BN_ACT_SHAPES = BN_SHAPES + [(9, 3, 4, 4)]  # the last one runs in several blocks (see the BLOCK patch below)


def naive_bn_act(x, gamma, beta, rm, rv, train, slope):
    z, new_rm, new_rv = naive_bn(x, gamma, beta, rm, rv, train, 0.1, 1e-5)
    return np.where(z > 0, z, slope * z), new_rm, new_rv


def every_bn_act_case(test):
    """Every shape above, train and eval mode, ReLU and leaky ReLU."""
    for mark in (pytest.mark.parametrize("slope", [0.0, 0.01]), pytest.mark.parametrize("train", [True, False]),
                 pytest.mark.parametrize("shape", BN_ACT_SHAPES)):
        test = mark(test)
    return test


@pytest.fixture
def small_blocks(monkeypatch):
    """2 samples of a (9, 3, 4, 4) map per block: the fused op's block loop and threads run."""
    from bioplaus.ops import bn_act

    monkeypatch.setattr(bn_act, "BLOCK", 2 * 3 * 4 * 4)


@every_bn_act_case
def test_bn_act_forward_naive(xp, shape, train, slope, small_blocks):
    rng = np.random.default_rng(13)
    C = shape[1]
    x = rand(rng, *shape) * 2 + 0.5
    gamma, beta = rand(rng, C), rand(rng, C)
    rm, rv = rand(rng, C), 0.5 + rng.random(C)
    x0 = x.copy()
    args = [xp.asarray(a) for a in (x, gamma, beta, rm, rv)]
    h, _, nrm, nrv = ops.bn_act_forward(*args, train, slope)
    ref, ref_rm, ref_rv = naive_bn_act(x, gamma, beta, rm, rv, train, slope)
    assert isinstance(h, xp.ndarray)
    assert rel_error(host(h), ref) < 1e-12
    assert rel_error(host(nrm), ref_rm) < 1e-13 and rel_error(host(nrv), ref_rv) < 1e-13
    assert np.array_equal(host(args[0]), x0)  # a is not touched without overwrite


@every_bn_act_case
def test_bn_act_gradients(xp, shape, train, slope, small_blocks):
    rng = np.random.default_rng(14)
    C = shape[1]
    x, gamma, beta = rand(rng, *shape), rand(rng, C), rand(rng, C)
    rm, rv = rand(rng, C), 0.5 + rng.random(C)

    def fwd(x, gamma, beta):
        h, cache, _, _ = ops.bn_act_forward(x, gamma, beta, xp_or_np(x, rm), xp_or_np(x, rv), train, slope)
        return h, cache

    gradcheck(xp, fwd, ops.bn_act_backward, [x, gamma, beta], [0, 1, 2])


def test_bn_act_is_deterministic_across_threads(small_blocks):
    """Per-channel sums are added in block order, whichever thread ran a block: bit-identical reruns."""
    rng = np.random.default_rng(16)
    x, dh = rand(rng, 9, 3, 4, 4).astype(np.float32), rand(rng, 9, 3, 4, 4).astype(np.float32)
    gamma, beta = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    runs = []
    for _ in range(20):
        h, cache, m, v = ops.bn_act_forward(x, gamma, beta, rm, rv, True, 0.01)
        runs.append((h, m, v) + ops.bn_act_backward(dh, cache))
    for run in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(run, runs[0]))


@pytest.mark.parametrize("slope", [0.0, 0.01])
def test_bn_act_equals_batchnorm_then_act(slope, small_blocks):
    """The fused op gives the two ops' values, and its in-place forms give the same values."""
    rng = np.random.default_rng(15)
    x, gamma, beta = rand(rng, 9, 3, 4, 4), rand(rng, 3), rand(rng, 3)
    rm, rv = np.zeros(3), np.ones(3)
    dh = rand(rng, 9, 3, 4, 4)
    z, bn_cache, _, _ = ops.batchnorm_forward(x, gamma, beta, rm, rv, True)
    h_ref, act_cache = ops.act_forward(z, slope)
    dx_ref, dg_ref, db_ref = ops.batchnorm_backward(ops.act_backward(dh, act_cache), bn_cache)
    h, cache, _, _ = ops.bn_act_forward(x.copy(), gamma, beta, rm, rv, True, slope, overwrite=True)
    dx, dg, db = ops.bn_act_backward(dh.copy(), cache, overwrite_dh=True)
    for got, ref in ((h, h_ref), (dx, dx_ref), (dg, dg_ref), (db, db_ref)):
        assert rel_error(got, ref) < 1e-12
    with pytest.raises(ValueError, match="slope"):
        ops.bn_act_forward(x, gamma, beta, rm, rv, True, 1.5)


# ----------------------------------------------------------------------------- activations


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 2, 2)])
def test_activation(xp, slope, shape):
    rng = np.random.default_rng(13)
    a = away_from_zero(rng, *shape)
    h, _ = ops.act_forward(xp.asarray(a), slope)
    assert isinstance(h, xp.ndarray)
    assert np.array_equal(host(h), np.array([v if v > 0 else slope * v for v in a.ravel()]).reshape(shape))
    gradcheck(xp, lambda a: ops.act_forward(a, slope), lambda d, c: (ops.act_backward(d, c),), [a], [0])


@pytest.mark.parametrize("slope", [0.0, 0.01])
def test_activation_gradient_at_zero(xp, slope):
    _, cache = ops.act_forward(xp.zeros(3), slope)
    assert np.array_equal(host(ops.act_backward(xp.ones(3), cache)), np.full(3, slope))


# ----------------------------------------------------------------------------- dropout


def test_dropout_mask_values_and_rate():
    rng = np.random.default_rng(14)
    p = 0.3
    mask = ops.dropout_mask(rng, (200, 100), p, np.float32)
    assert mask.dtype == np.float32 and mask.shape == (200, 100)
    vals = set(np.unique(mask).tolist())
    assert vals == {0.0, np.float32(1 / (1 - p))}
    assert abs((mask == 0).mean() - p) < 0.02
    assert abs(mask.mean() - 1.0) < 0.03  # inverted scaling keeps the expectation
    assert ops.dropout_mask(rng, (2, 3), 0.0, np.float32) is None


def test_dropout_mask_channelwise_and_keyed():
    from bioplaus.backend import get_backend

    be = get_backend("cpu")
    m1 = ops.dropout_mask(be.rng(1, "dropout", 2), (4, 6, 5, 5), 0.5, np.float64, channelwise=True)
    m2 = ops.dropout_mask(be.rng(1, "dropout", 2), (4, 6, 5, 5), 0.5, np.float64, channelwise=True)
    m3 = ops.dropout_mask(be.rng(1, "dropout", 3), (4, 6, 5, 5), 0.5, np.float64, channelwise=True)
    assert m1.shape == (4, 6, 1, 1) and m1.dtype == np.float64
    assert np.array_equal(m1, m2) and not np.array_equal(m1, m3)


@pytest.mark.parametrize("channelwise", [False, True])
def test_dropout_forward_backward(xp, channelwise):
    rng = np.random.default_rng(15)
    shape = (3, 4, 2, 3) if channelwise else (5, 6)
    mask = ops.dropout_mask(rng, shape, 0.4, np.float64, channelwise=channelwise)
    x = rand(rng, *shape)
    out, _ = ops.dropout_forward(xp.asarray(x), xp.asarray(mask))
    assert isinstance(out, xp.ndarray)
    assert np.array_equal(host(out), x * mask)
    if channelwise:  # whole channels dropped together
        zero = host(out)[:, :, 0, 0] == 0
        assert np.array_equal(zero[..., None, None] & np.ones(shape, bool), host(out) == 0)
    gradcheck(
        xp,
        lambda x: ops.dropout_forward(x, xp_or_np(x, mask)),
        lambda d, c: (ops.dropout_backward(d, c),),
        [x],
        [0],
    )


# ----------------------------------------------------------------------------- flatten


def test_flatten(xp):
    x = rand(np.random.default_rng(16), 2, 3, 2, 2)
    out, cache = ops.flatten_forward(xp.asarray(x))
    assert out.shape == (2, 12) and np.array_equal(host(out)[1], x[1].ravel())
    assert np.array_equal(host(ops.flatten_backward(out, cache)), x)


# ----------------------------------------------------------------------------- losses


def test_softmax_cross_entropy(xp):
    rng = np.random.default_rng(17)
    logits, y = rand(rng, 5, 4) * 3, rng.integers(0, 4, 5)
    loss, _ = ops.softmax_cross_entropy(xp.asarray(logits), xp.asarray(y))
    assert isinstance(loss, xp.ndarray) and loss.shape == ()
    naive = np.mean([math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(logits, y)])
    assert abs(float(host(loss)) - naive) < 1e-13
    fwd_only = ops.softmax_cross_entropy_forward(xp.asarray(logits), xp.asarray(y))
    assert abs(float(host(fwd_only)) - naive) < 1e-13
    _, dz = ops.softmax_cross_entropy(xp.asarray(logits), xp.asarray(y))
    num = numerical_grad(lambda: ops.softmax_cross_entropy(logits, y)[0], logits)
    assert rel_error(host(dz), num) < TOL
    # uniform logits: ln K; large logits stay finite
    l0, _ = ops.softmax_cross_entropy(xp.zeros((3, 10)), xp.asarray([0, 1, 2]))
    assert abs(float(host(l0)) - math.log(10)) < 1e-12
    big, dbig = ops.softmax_cross_entropy(xp.asarray([[1000.0, -1000.0]]), xp.asarray([1]))
    assert abs(float(host(big)) - 2000.0) < 1e-9 and np.isfinite(host(dbig)).all()


def test_sigmoid_bce_with_logits(xp):
    rng = np.random.default_rng(18)
    z, t = rand(rng, 4, 6) * 2, (rng.random((4, 6)) > 0.5).astype(np.float64)
    loss, dz = ops.sigmoid_bce_with_logits(xp.asarray(z), xp.asarray(t))
    assert isinstance(loss, xp.ndarray) and loss.shape == ()
    s = 1 / (1 + np.exp(-z))
    naive = np.mean(-(t * np.log(s) + (1 - t) * np.log(1 - s)))
    assert abs(float(host(loss)) - naive) < 1e-13
    num = numerical_grad(lambda: ops.sigmoid_bce_with_logits(z, t)[0], z)
    assert rel_error(host(dz), num) < TOL
    big, dbig = ops.sigmoid_bce_with_logits(xp.asarray([[800.0, -800.0]]), xp.asarray([[0.0, 0.0]]))
    assert abs(float(host(big)) - 400.0) < 1e-9
    assert np.allclose(host(dbig), [[0.5, 0.0]])


def test_mse(xp):
    rng = np.random.default_rng(19)
    p, t = rand(rng, 3, 5), rand(rng, 3, 5)
    loss, dp = ops.mse(xp.asarray(p), xp.asarray(t))
    assert isinstance(loss, xp.ndarray) and loss.shape == ()
    assert abs(float(host(loss)) - sum((a - b) ** 2 for a, b in zip(p.ravel(), t.ravel())) / 15) < 1e-14
    num = numerical_grad(lambda: ops.mse(p, t)[0], p)
    assert rel_error(host(dp), num) < TOL


def test_count_correct(xp):
    rng = np.random.default_rng(20)
    logits, y = rand(rng, 50, 7), rng.integers(0, 7, 50)
    got = ops.count_correct(xp.asarray(logits), xp.asarray(y))
    assert isinstance(got, xp.ndarray) and got.shape == ()
    assert int(host(got)) == sum(int(np.argmax(row) == t) for row, t in zip(logits, y))


# ----------------------------------------------------------------------------- similarity


def naive_similarity(X):
    B = X.shape[0]
    if X.ndim == 4 and X.shape[1] > 3 and X.shape[2] > 1:
        Z = np.array([[np.std(X[b, c].ravel(), ddof=1) for c in range(X.shape[1])] for b in range(B)])
    else:
        Z = X.reshape(B, -1)
    rows = []
    for z in Z:
        zc = z - z.mean()
        rows.append(zc / (1e-8 + math.sqrt(float(np.sum(zc**2)))))
    S = np.array([[float(np.dot(a, b)) for b in rows] for a in rows])
    return np.clip(S, -1, 1)


SIM_SHAPES = [(5, 4, 3, 3), (4, 6, 2, 3), (3, 3, 4, 4), (4, 5, 1, 1), (6, 7), (2, 3)]


@pytest.mark.parametrize("shape", SIM_SHAPES)
def test_similarity_forward_naive(xp, shape):
    X = rand(np.random.default_rng(21), *shape)
    S, _ = ops.similarity_forward(xp.asarray(X))
    assert isinstance(S, xp.ndarray) and S.shape == (shape[0], shape[0])
    assert rel_error(host(S), naive_similarity(X)) < 1e-13


@pytest.mark.parametrize("shape", SIM_SHAPES)
def test_similarity_gradients(xp, shape):
    X = rand(np.random.default_rng(22), *shape)
    gradcheck(xp, ops.similarity_forward, lambda d, c: (ops.similarity_backward(d, c),), [X], [0])


@pytest.mark.parametrize("shape", [(5, 8), (4, 5, 3, 3)])
def test_similarity_near_duplicates(xp, shape):
    """Rows that almost repeat put S next to the clamp; the gradient is still exact."""
    rng = np.random.default_rng(23)
    base = rand(rng, 1, *shape[1:])
    X = base + 1e-2 * rand(rng, *shape)
    S, _ = ops.similarity_forward(X)
    off = S[~np.eye(shape[0], dtype=bool)]
    assert off.min() > 0.99  # really near the clamp
    gradcheck(
        xp,
        ops.similarity_forward,
        lambda d, c: (ops.similarity_backward(d, c),),
        [X],
        [0],
        tol=1e-6,
    )


def test_similarity_clamp_blocks_gradient(xp):
    rng = np.random.default_rng(24)
    X = xp.asarray(rand(rng, 4, 5))
    _, cache = ops.similarity_forward(X)
    R = cache[0].copy()
    R[0, 1] = R[1, 0] = 1.5  # pretend this pair came out above the clamp
    R[2, 3] = 1.0  # exactly at the boundary: passes
    fake = (R,) + cache[1:]
    dS = xp.asarray(rand(rng, 4, 4))
    dS2 = dS.copy()
    dS2[0, 1] += 7.0
    dS2[1, 0] -= 3.0
    assert np.array_equal(host(ops.similarity_backward(dS, fake)), host(ops.similarity_backward(dS2, fake)))
    dS3 = dS.copy()
    dS3[2, 3] += 1.0
    assert not np.allclose(host(ops.similarity_backward(dS, fake)), host(ops.similarity_backward(dS3, fake)))


def test_label_similarity(xp):
    Y = np.eye(4)[[0, 1, 0, 3, 1]]
    S = host(ops.label_similarity(xp.asarray(Y)))
    assert rel_error(S, naive_similarity(Y)) < 1e-13
    assert S[0, 2] > 0.999 and S[0, 1] < 0  # same class ~ 1, different classes negative
