"""ReLU and leaky ReLU.

Forward:   h = a            where a > 0
           h = slope * a    elsewhere   (slope 0: ReLU; the paper's leaky ReLU uses 0.01)
Backward:  da = dh * (1 if a > 0 else slope)

NOTE: at exactly a == 0 the gradient is 0 for ReLU and ``slope`` for leaky ReLU, as in PyTorch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from bioplaus.backend import get_array_module


class ActCache(NamedTuple):
    """What :func:`act_backward` needs: where the input was positive, and the negative slope."""

    positive: Any  # (same as a), bool
    slope: float


def act_forward(a, slope: float = 0.0, overwrite: bool = False):
    """``a`` (any shape) -> ``h`` (same shape), cache (the positive mask and the slope).

    ``overwrite=True`` hands ``a`` over (the caller needs it no more): ``h`` is computed in its buffer.
    """
    xp = get_array_module(a)
    positive = a > 0  # (same as a), bool
    if overwrite and a.ndim > 0 and slope < 1.0:
        step = max(1, a.shape[0] // 8)  # slope * a one slice of the batch at a time
        for n0 in range(0, a.shape[0], step):
            s = a[n0 : n0 + step]
            xp.maximum(s, s * s.dtype.type(slope), out=s)
        return a, ActCache(positive, slope)
    if slope == 0.0:
        h = xp.maximum(a, 0)
    elif 0.0 < slope < 1.0:  # then max(a, slope * a) is a where a > 0 and slope * a elsewhere
        h = a * a.dtype.type(slope)
        xp.maximum(a, h, out=h)
    else:
        h = xp.where(positive, a, a * a.dtype.type(slope))
    return h, ActCache(positive, slope)


def act_backward(dh, cache, overwrite_dh: bool = False):
    """``dh`` -> ``da`` (same shape).

    ``overwrite_dh=True`` lets a caller that owns ``dh`` (and needs it no more) have ``da`` computed
    in its buffer, a slice of the batch at a time: no second array of dh's size (peak memory).
    """
    xp = get_array_module(dh)
    positive, slope = cache
    t = dh.dtype.type
    exact = t(1) - t(slope) + t(slope) == t(1)  # host scalars: the factor below is exactly 1 where a > 0
    if overwrite_dh and dh.ndim > 0 and (slope == 0.0 or exact):
        step = max(1, dh.shape[0] // 8)
        for n0 in range(0, dh.shape[0], step):
            d, m = dh[n0 : n0 + step], positive[n0 : n0 + step]
            if slope == 0.0:
                d *= m
            else:
                f = m * (t(1) - t(slope))  # this slice's factor: 1 where a > 0, slope elsewhere
                f += t(slope)
                d *= f
        return dh
    if slope == 0.0:
        return dh * positive
    if exact:
        # arithmetic on the bool mask vectorises far better than where/copyto with a mask
        return dh * (positive * (t(1) - t(slope)) + t(slope))
    return xp.where(positive, dh, dh * t(slope))
