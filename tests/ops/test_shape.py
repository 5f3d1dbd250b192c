"""Flatten and its backward."""

from __future__ import annotations

import numpy as np
from helpers import host, rand

from bioplaus import ops


def test_flatten(xp):
    x = rand(np.random.default_rng(16), 2, 3, 2, 2)
    out, cache = ops.flatten_forward(xp.asarray(x))
    assert out.shape == (2, 12) and np.array_equal(host(out)[1], x[1].ravel())
    assert np.array_equal(host(ops.flatten_backward(out, cache)), x)
