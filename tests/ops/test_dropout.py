"""Dropout masks (rate, scaling, keyed streams, whole channels) and the op's forward and backward."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import gradcheck, host, rand, xp_or_np

from bioplaus import ops


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
