"""ReLU and leaky ReLU vs a naive loop and float64 central differences, and the gradient at 0."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import away_from_zero, gradcheck, host

from bioplaus import ops


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
