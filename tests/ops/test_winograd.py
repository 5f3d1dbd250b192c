"""Winograd's F(m x m, 3 x 3) convolution: forward vs the naive loop, backward vs float64 central
differences, its float32 rounding, and where ``conv2d_forward`` takes it (a device's 3x3 stride-1 convs)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from helpers import gradcheck, host, naive_conv, rand, rel_error

from bioplaus import ops
from bioplaus.backend import device_paths_on_cpu
from bioplaus.ops import conv, winograd

WINOGRAD_CASES = [
    # N, C, H, W, F, pad
    (2, 3, 8, 8, 4, 1),  # whole tiles for m = 2 and m = 4
    (2, 3, 5, 7, 4, 1),  # the last tiles reach past the output (cropped), rectangular
    (1, 2, 7, 9, 3, 0),  # no padding
    (3, 2, 4, 6, 2, 2),  # more padding than the kernel's half
    (2, 5, 1, 1, 3, 1),  # a 1x1 map: one tile, mostly padding
]


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize("N,C,H,Wd,F,pad", WINOGRAD_CASES)
def test_winograd_forward_naive(xp, m, N, C, H, Wd, F, pad):
    rng = np.random.default_rng(H + Wd + pad)
    x, W = rand(rng, N, C, H, Wd), rand(rng, F, C, 3, 3)
    out, cache = winograd.winograd_conv3x3_forward(xp.asarray(x), xp.asarray(W), pad, m)
    assert isinstance(out, xp.ndarray) and isinstance(cache.V, xp.ndarray)
    assert rel_error(host(out), naive_conv(x, W, None, 1, pad)) < 1e-13


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize("N,C,H,Wd,F,pad", WINOGRAD_CASES)
def test_winograd_gradients(xp, m, N, C, H, Wd, F, pad):
    rng = np.random.default_rng(N + C + H + pad)
    gradcheck(
        xp,
        lambda x, W: winograd.winograd_conv3x3_forward(x, W, pad, m),
        lambda d, c: winograd.winograd_conv3x3_backward(d, c),
        [rand(rng, N, C, H, Wd), rand(rng, F, C, 3, 3)],
        [0, 1],
    )


@pytest.mark.parametrize("m,bound", [(2, 5e-6), (4, 5e-5)])
def test_winograd_float32_rounding(m, bound):
    """At a VGG layer's scale (64 -> 64 channels, 16x16), float32 results are within ``bound`` of the
    float64 convolution (relative to the largest value): the transforms' coefficients cost some
    digits, more for m = 4 than for m = 2, and im2col's own float32 error is far below both."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 64, 16, 16))
    W = rng.standard_normal((64, 64, 3, 3)) / 24.0
    d = rng.standard_normal((8, 64, 16, 16))
    ref_out, ref_cache = conv.conv2d_forward(x, W, None, 1, 1)  # float64: exact to 1e-15 here
    ref_dx, ref_dW, _ = conv.conv2d_backward(d, ref_cache)
    f32 = [a.astype(np.float32) for a in (x, W, d)]
    out, cache = winograd.winograd_conv3x3_forward(f32[0], f32[1], 1, m)
    dx, dW = winograd.winograd_conv3x3_backward(f32[2], cache)
    assert out.dtype == dx.dtype == dW.dtype == np.float32
    errors = [float(np.abs(a - r).max() / np.abs(r).max()) for a, r in ((out, ref_out), (dx, ref_dx), (dW, ref_dW))]
    assert max(errors) < bound, errors
    im2col_out, _ = conv.conv2d_forward(f32[0], f32[1], None, 1, 1)
    assert float(np.abs(im2col_out - ref_out).max() / np.abs(ref_out).max()) < bound / 5


def test_winograd_backward_can_write_dx_into_dout(xp):
    rng = np.random.default_rng(2)
    x, W, d = (xp.asarray(a) for a in (rand(rng, 2, 4, 6, 6), rand(rng, 4, 4, 3, 3), rand(rng, 2, 4, 6, 6)))
    _, cache = winograd.winograd_conv3x3_forward(x, W, 1, 4)
    dx, dW = winograd.winograd_conv3x3_backward(d.copy(), cache)
    dout = d.copy()
    dx2, dW2 = winograd.winograd_conv3x3_backward(dout, cache, overwrite_dout=True)
    assert dx2 is dout  # no new array of x's size
    assert rel_error(host(dx2), host(dx)) == 0 and rel_error(host(dW2), host(dW)) == 0
    none, dW3 = winograd.winograd_conv3x3_backward(d, cache, need_dx=False)
    assert none is None and rel_error(host(dW3), host(dW)) == 0


# ------------------------------------------------------------------------ where conv2d takes it
def _conv_case(rng, C=3, F=4, k=3):
    return rand(rng, 2, C, 6, 6), rand(rng, F, C, k, k), rand(rng, F)


def test_conv2d_on_the_cpu_paths_keeps_im2col():
    """Every CPU run's numbers (the golden runs, the resumed ones) rest on im2col."""
    x, W, b = _conv_case(np.random.default_rng(0))
    _, cache = ops.conv2d_forward(x, W, b, 1, 1)
    assert isinstance(cache, conv.ConvCache)


@pytest.mark.parametrize("k,stride,winograd_expected", [(3, 1, True), (3, 2, False), (1, 1, False), (7, 1, False)])
def test_conv2d_on_device_paths_runs_3x3_stride_1_by_winograd(k, stride, winograd_expected):
    rng = np.random.default_rng(1)
    x, W, b = _conv_case(rng, k=k)
    ref_out, ref_cache = ops.conv2d_forward(x, W, b, stride, k // 2)
    R = rand(rng, *ref_out.shape)
    ref_grads = ops.conv2d_backward(R.copy(), ref_cache)
    with device_paths_on_cpu():
        out, cache = ops.conv2d_forward(x, W, b, stride, k // 2)
        grads = ops.conv2d_backward(R.copy(), cache, overwrite_dout=True)
    assert isinstance(cache, conv.WinogradConv) is winograd_expected
    assert cache.shape == x.shape  # what a rule's own carry reads (rules._carry)
    assert rel_error(out, ref_out) < 1e-13
    for g, r in zip(grads, ref_grads):
        assert rel_error(g, r) < 1e-13


@pytest.mark.parametrize("device_paths", [False, True])
def test_conv2d_algorithm_asked_for(device_paths, monkeypatch):
    """"im2col" and "winograd" hold on either paths; Winograd's buffers past the device limit: im2col,
    chunked; an unknown name is an error, not a silent choice."""
    x, W, b = _conv_case(np.random.default_rng(2))
    ref = ops.conv2d_forward(x, W, b, 1, 1, "im2col")[0]
    with device_paths_on_cpu() if device_paths else contextlib.nullcontext():
        assert isinstance(ops.conv2d_forward(x, W, b, 1, 1, "im2col")[1], conv.ConvCache)
        out, cache = ops.conv2d_forward(x, W, b, 1, 1, "winograd")
        assert isinstance(cache, conv.WinogradConv) and rel_error(out, ref) < 1e-13
        assert isinstance(ops.conv2d_forward(x, W, b, 2, 1, "winograd")[1], conv.ConvCache)  # stride 2: no
        with pytest.raises(ValueError, match="unknown algorithm"):
            ops.conv2d_forward(x, W, b, 1, 1, "fft")
        monkeypatch.setattr(conv, "DEVICE_IM2COL_MAX_BYTES", 1)
        monkeypatch.setattr(conv, "IM2COL_MAX_BYTES", 1)
        _, cache = ops.conv2d_forward(x, W, b, 1, 1, "winograd")
    assert isinstance(cache, conv.ConvCache) and cache.chunk == 1
