"""ReLU and leaky ReLU.

Forward:   h = a            where a > 0
           h = slope * a    elsewhere   (slope 0: ReLU; the paper's leaky ReLU uses 0.01)
Backward:  da = dh * (1 if a > 0 else slope)

NOTE: at exactly a == 0 the gradient is 0 for ReLU and ``slope`` for leaky ReLU, as in PyTorch.
"""

from __future__ import annotations

from bioplaus.backend import get_array_module


def act_forward(a, slope: float = 0.0):
    """``a`` (any shape) -> ``h`` (same shape), cache (the positive mask and the slope)."""
    xp = get_array_module(a)
    positive = a > 0  # (same as a), bool
    if slope == 0.0:
        h = xp.maximum(a, 0)
    elif 0.0 < slope < 1.0:  # then max(a, slope * a) is a where a > 0 and slope * a elsewhere
        h = a * a.dtype.type(slope)
        xp.maximum(a, h, out=h)
    else:
        h = xp.where(positive, a, a * a.dtype.type(slope))
    return h, (positive, slope)


def act_backward(dh, cache):
    """``dh`` -> ``da`` (same shape)."""
    xp = get_array_module(dh)
    positive, slope = cache
    if slope == 0.0:
        return dh * positive
    t = dh.dtype.type
    if t(1) - t(slope) + t(slope) == t(1):  # host scalars: the factor below is exactly 1 where a > 0
        # arithmetic on the bool mask vectorises far better than where/copyto with a mask
        return dh * (positive * (t(1) - t(slope)) + t(slope))
    return xp.where(positive, dh, dh * t(slope))
