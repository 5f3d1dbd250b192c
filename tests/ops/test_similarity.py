"""The similarity matrix S(X) vs a naive loop and float64 central differences; its clamp."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import gradcheck, host, rand, rel_error

from bioplaus import ops


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
