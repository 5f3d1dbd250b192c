"""Inverted dropout with a mask made by the caller.

Forward:   out = x * mask,   mask in {0, 1/(1-p)}   (element mask (N, D) or channel mask (N, C, 1, 1))
Backward:  dx = dout * mask

The mask is drawn by the caller from its own random stream (:func:`dropout_mask`), so a block
owns its randomness and a rerun with the same key draws the same mask.
"""

from __future__ import annotations

from bioplaus.backend import get_array_module, in_parts


def dropout_mask(rng, shape, p: float, dtype, channelwise: bool = False):
    """A scaled keep-mask of ``shape`` (or ``(N, C, 1, 1)`` when ``channelwise``); None when p == 0.

    ``rng`` is a backend generator (NumPy ``Generator`` or CuPy's); uniforms are drawn in float32.
    """
    if p == 0:
        return None
    shape = tuple(shape)
    if channelwise:
        shape = (shape[0], shape[1]) + (1,) * (len(shape) - 2)  # (N, C, 1, 1)
    u = rng.random(shape, dtype="float32")
    xp = get_array_module(u)
    if p >= 1:
        return xp.zeros(shape, dtype=dtype)
    mask = (u >= p).astype(dtype)
    mask *= mask.dtype.type(1.0 / (1.0 - p))
    return mask


def _masked(x, mask, out) -> None:
    """``out = x * mask``, sample by sample on the CPU's threads (an element-wise pass NumPy runs on one
    core: the parts are the same products, so the result does not depend on the split)."""
    xp = get_array_module(x)
    if mask.ndim != x.ndim or mask.shape[0] != x.shape[0]:  # a mask broadcast over the batch: one pass
        xp.multiply(x, mask, out=out)
        return
    in_parts(xp, x.shape[0], lambda lo, hi: xp.multiply(x[lo:hi], mask[lo:hi], out=out[lo:hi]), x.size)


def dropout_forward(x, mask, overwrite: bool = False):
    """``x`` and a broadcastable scaled ``mask`` (or None: no dropout) -> out, cache.

    ``overwrite=True`` hands ``x`` over (the caller needs it no more): it is masked in place.
    """
    if mask is None:
        return x, None
    xp = get_array_module(x)
    out = x if overwrite and xp.result_type(x, mask) == x.dtype else xp.empty(x.shape, xp.result_type(x, mask))
    _masked(x, mask, out)
    return out, mask


def dropout_backward(dout, cache):
    """``dout`` -> ``dx``."""
    mask = cache
    if mask is None:
        return dout
    xp = get_array_module(dout)
    dx = xp.empty(dout.shape, xp.result_type(dout, mask))
    _masked(dout, mask, dx)
    return dx
