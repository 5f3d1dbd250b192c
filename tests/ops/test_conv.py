"""2-D convolution: forward vs a naive loop, backward vs float64 central differences, chunked im2col."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import gradcheck, host, naive_conv, rand, rel_error

from bioplaus import ops
from bioplaus.ops import conv as conv_module

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
