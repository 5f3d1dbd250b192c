"""Dense op: backward vs float64 central differences, forward vs a naive sum; dtype and need_dx."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import gradcheck, host, rand, rel_error

from bioplaus import ops


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
