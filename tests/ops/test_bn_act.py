"""Batch norm + φ, fused: vs the naive formula, float64 central differences, and the two plain ops."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import gradcheck, host, rand, rel_error, xp_or_np
from test_batchnorm import BN_SHAPES, naive_bn

from bioplaus import ops

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
