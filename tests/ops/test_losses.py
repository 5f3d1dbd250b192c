"""Losses vs naive formulas and float64 central differences; stability at large logits."""

from __future__ import annotations

import math

import numpy as np
from helpers import TOL, host, numerical_grad, rand, rel_error

from bioplaus import ops


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
