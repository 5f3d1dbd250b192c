"""Batch norm (train and eval) vs a naive formula and float64 central differences."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import gradcheck, host, rand, rel_error, xp_or_np

from bioplaus import ops


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


def test_batchnorm_tiny_variance(xp):
    rng = np.random.default_rng(12)
    x = 3.0 + 1e-3 * rand(rng, 8, 3)  # variance 1e-6, below eps = 1e-5
    gamma, beta = rand(rng, 3), rand(rng, 3)
    rm, rv = np.zeros(3), np.ones(3)

    def fwd(x, gamma, beta):
        out, cache, _, _ = ops.batchnorm_forward(x, gamma, beta, xp_or_np(x, rm), xp_or_np(x, rv), True)
        return out, cache

    gradcheck(xp, fwd, ops.batchnorm_backward, [x, gamma, beta], [0, 1, 2], eps=1e-7, tol=1e-6)
