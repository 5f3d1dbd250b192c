"""Batch normalisation followed by φ (ReLU or leaky ReLU), fused: a block's ``h = φ(BN(a))``.

The same functions as :mod:`bioplaus.ops.batchnorm` then :mod:`bioplaus.ops.activation`::

    train: mu, var = mean and biased variance of a over the batch (and space), per channel
    eval:  mu, var = the running statistics
    xhat = (a - mu) / sqrt(var + eps);   z = gamma * xhat + beta;   h = φ(z) = max(z, slope * z)
Backward, given δh:
    δz = δh * φ'(z),  φ'(z) = 1 where z > 0, else slope (0 for ReLU)
    dgamma = sum(δz * xhat),  dbeta = sum(δz)
    train: δa = gamma / sqrt(var + eps) / M * (M * δz - dbeta - xhat * dgamma)
    eval:  δa = gamma / sqrt(var + eps) * δz

Why fused: the two ops in a row pass over the feature map about eight times forward and five
times backward; here the forward makes three passes and the backward two, each over blocks of
samples small enough to stay in the cache and shared among the CPU's cores
(:func:`bioplaus.backend.blocked`). The cache keeps ``xhat`` only: ``z`` is recomputed from it in
the backward, with the same two roundings as the forward, so φ' needs no stored mask (a quarter of
the map in float32 saved per block). Per-channel sums are taken block by block and added in block
order, so the result does not depend on which thread ran which block.

On a GPU the passes are fused kernels (:mod:`bioplaus.ops.kernels`): two reductions and one
element-wise kernel forward, two reductions and one element-wise kernel backward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from bioplaus.backend import BLOCK, blocked, get_array_module
from bioplaus.ops import kernels
from bioplaus.ops.batchnorm import _axes_and_shape, _sum_of_products


class BnActCache(NamedTuple):
    """What :func:`bn_act_backward` needs: xhat (z is recomputed from it), BN's arrays, φ's slope, the mode."""

    xhat: Any  # like a
    gamma: Any  # (C,)
    beta: Any  # (C,)
    inv_std: Any  # (C,)
    slope: float
    train: bool


def _channel_sum(x):
    """Per-channel sum over the batch (and space). (C,)"""
    xp = get_array_module(x)
    return x.sum(axis=0) if x.ndim == 2 else xp.einsum("nchw->c", x)


def _samples_per_block(x) -> int:
    """About BLOCK elements a block, whole samples."""
    return max(1, BLOCK // max(x.size // max(x.shape[0], 1), 1))


def _num_blocks(x) -> int:
    return -(-x.shape[0] // _samples_per_block(x))


def _in_order(parts: list):
    """The sum of the blocks' partial sums, in block order (deterministic). A single pass over the
    whole batch (the GPU's) fills only the first entry."""
    filled = [p for p in parts if p is not None]
    return sum(filled[1:], filled[0])


def _over_samples(xp, x, body) -> None:
    """``body(i, lo, hi)`` for block ``i`` of samples ``[lo, hi)``."""
    block = _samples_per_block(x)
    blocked(xp, x.shape[0], lambda lo, hi: body(lo // block, lo, hi), block=block)


def _z_into(out, xhat, gamma, beta) -> None:
    """``out = gamma * xhat + beta`` in two roundings, the same in the forward and the backward."""
    xp = get_array_module(out)
    xp.multiply(xhat, gamma, out=out)
    out += beta


def bn_act_forward(a, gamma, beta, running_mean, running_var, train: bool, slope: float = 0.0,
                   momentum=0.1, eps=1e-5, overwrite: bool = False):
    """``a`` (N, C) or (N, C, H, W) -> ``h, cache, new_running_mean, new_running_var``.

    ``slope`` in [0, 1): 0 is ReLU. ``overwrite=True`` hands ``a`` over (the caller needs it no
    more): the cached ``xhat`` is then computed in a's buffer; otherwise ``a`` is left untouched.
    """
    if not 0.0 <= slope < 1.0:
        raise ValueError(f"bn_act_forward: slope must be in [0, 1), got {slope}")
    xp = get_array_module(a)
    _, pshape = _axes_and_shape(a)
    if kernels.available(xp):
        return _forward_fused(xp, a, gamma, beta, running_mean, running_var, train, slope, momentum, eps, overwrite)
    t = a.dtype.type
    M = a.size // a.shape[1]
    xhat = a if overwrite else a.copy()  # (like a): centred, then scaled, in place
    parts: list = [None] * _num_blocks(a)
    if train:
        def block_sums(i, lo, hi):
            parts[i] = _channel_sum(xhat[lo:hi])

        _over_samples(xp, xhat, block_sums)
        mu = _in_order(parts) * t(1.0 / M)  # (C,)
        mu_b = mu.reshape(pshape)

        def centre(i, lo, hi):
            blk = xhat[lo:hi]
            blk -= mu_b
            parts[i] = _sum_of_products(blk, blk)

        _over_samples(xp, xhat, centre)
        var = _in_order(parts) * t(1.0 / M)  # (C,) biased
        unbiased = var * t(M / max(M - 1, 1))
        new_mean = (1 - momentum) * running_mean + momentum * mu.astype(running_mean.dtype)
        new_var = (1 - momentum) * running_var + momentum * unbiased.astype(running_var.dtype)
    else:
        mu_b = running_mean.astype(a.dtype, copy=False).reshape(pshape)
        var = running_var.astype(a.dtype, copy=False)
        new_mean, new_var = running_mean, running_var
    inv_std = 1.0 / xp.sqrt(var + t(eps))  # (C,)
    inv_b, gamma_b, beta_b = inv_std.reshape(pshape), gamma.reshape(pshape), beta.reshape(pshape)
    h = xp.empty_like(xhat)

    def normalise_and_act(i, lo, hi):
        blk, hb = xhat[lo:hi], h[lo:hi]
        if not train:
            blk -= mu_b
        blk *= inv_b  # xhat
        _z_into(hb, blk, gamma_b, beta_b)  # z
        if slope == 0.0:
            xp.maximum(hb, t(0), out=hb)
        else:
            xp.maximum(hb, hb * t(slope), out=hb)  # z where z > 0, slope * z elsewhere

    _over_samples(xp, xhat, normalise_and_act)
    cache = BnActCache(xhat, gamma, beta, inv_std, slope, train)
    return h, cache, new_mean, new_var


def bn_act_backward(dh, cache, overwrite_dh: bool = False):
    """``dh`` (like a) -> ``(da, dgamma (C,), dbeta (C,))``.

    ``overwrite_dh=True`` lets a caller that owns ``dh`` (and needs it no more) have ``da``
    computed in its buffer: no array of the map's size is made.
    """
    xp = get_array_module(dh)
    xhat, gamma, beta, inv_std, slope, train = cache
    _, pshape = _axes_and_shape(dh)
    if kernels.available(xp):
        return _backward_fused(xp, dh, cache, overwrite_dh)
    t = dh.dtype.type
    M = dh.size // dh.shape[1]
    gamma_b, beta_b = gamma.reshape(pshape), beta.reshape(pshape)
    scale = (gamma * inv_std).reshape(pshape)  # (1, C[, 1, 1])
    dz = dh if overwrite_dh else dh.copy()
    exact = t(1) - t(slope) + t(slope) == t(1)  # host scalars: then 1 - slope + slope is exactly 1
    nb = _num_blocks(dh)
    dbeta_parts: list = [None] * nb
    dgamma_parts: list = [None] * nb

    def act_backward_and_sums(i, lo, hi):
        d, xb = dz[lo:hi], xhat[lo:hi]
        z = xp.empty_like(d)
        _z_into(z, xb, gamma_b, beta_b)  # the forward's z, bit for bit
        if slope == 0.0:
            xp.multiply(d, z > 0, out=d)
        elif exact:  # arithmetic on the mask vectorises far better than a masked copy
            xp.multiply(z > 0, t(1) - t(slope), out=z)
            z += t(slope)  # φ': exactly 1 where z > 0, slope elsewhere
            d *= z
        else:
            xp.copyto(d, d * t(slope), where=z <= 0)
        dbeta_parts[i] = _channel_sum(d)
        dgamma_parts[i] = _sum_of_products(d, xb)

    _over_samples(xp, dz, act_backward_and_sums)
    dbeta = _in_order(dbeta_parts)  # (C,)
    dgamma = _in_order(dgamma_parts)  # (C,)
    if train:
        inv_m = t(1.0 / M)
        k = (dgamma * inv_m).reshape(pshape)
        mean_dz = (dbeta * inv_m).reshape(pshape)

        def finish(i, lo, hi):
            d = dz[lo:hi]
            d -= xhat[lo:hi] * k
            d -= mean_dz
            d *= scale
    else:
        def finish(i, lo, hi):
            dz[lo:hi] *= scale

    _over_samples(xp, dz, finish)
    return dz, dgamma, dbeta


# ------------------------------------------------------------------------------ fused (GPU)
def _channels(v, C: int):
    """(C,) -> (1, C, 1): broadcasts against a map seen as (N, C, H*W) (H*W = 1 for a dense block)."""
    return v.reshape(1, C, 1)


def _per_channel(xp, name: str, x3, *args):
    """Per-channel sum of a reduction kernel over (N, C, HW): first along each sample's contiguous
    HW positions (coalesced, N*C outputs), then over the batch. A reduction straight over axes
    (0, 2) walks memory with a stride per element and ran about 20x slower on an H200."""
    k = kernels.get(xp, name)
    if x3.shape[2] == 1:  # a dense block: (N, C, 1)
        return k(x3[:, :, 0], *(a[:, :, 0] if getattr(a, "ndim", 0) == 3 else a for a in args), axis=0)
    return k(x3, *args, axis=2).sum(axis=0)


def _forward_fused(xp, a, gamma, beta, running_mean, running_var, train, slope, momentum, eps, overwrite):
    """The same function in two reductions, one kernel over C and one element-wise kernel (``kernels``)."""
    N, C = a.shape[0], a.shape[1]
    t = a.dtype.type
    M = a.size // C
    a3 = a.reshape(N, C, -1)  # (N, C, HW)
    if train:
        total = _per_channel(xp, "channel_sum", a3)  # (C,)
        sq = _per_channel(xp, "channel_sum_sq_dev", a3, _channels(total, C), t(1.0 / M))  # (C,) sum (a - mu)^2
        mu, inv_std, new_mean, new_var = kernels.get(xp, "bn_stats")(
            total, sq, running_mean.astype(a.dtype, copy=False), running_var.astype(a.dtype, copy=False),
            t(1.0 / M), t(M / max(M - 1, 1)), t(momentum), t(eps))
        new_mean = new_mean.astype(running_mean.dtype, copy=False)
        new_var = new_var.astype(running_var.dtype, copy=False)
    else:
        mu = running_mean.astype(a.dtype, copy=False)
        inv_std = 1.0 / xp.sqrt(running_var.astype(a.dtype, copy=False) + t(eps))  # (C,)
        new_mean, new_var = running_mean, running_var
    xhat = a if overwrite and a.flags.c_contiguous else xp.empty(a.shape, a.dtype)  # the kernel may write over a
    h = xp.empty(a.shape, a.dtype)
    kernels.get(xp, "bn_act_forward")(a3, _channels(mu, C), _channels(inv_std, C), _channels(gamma, C),
                                      _channels(beta, C), t(slope), xhat.reshape(N, C, -1), h.reshape(N, C, -1))
    return h, BnActCache(xhat, gamma, beta, inv_std, slope, train), new_mean, new_var


def _backward_fused(xp, dh, cache, overwrite_dh: bool):
    xhat, gamma, beta, inv_std, slope, train = cache
    N, C = dh.shape[0], dh.shape[1]
    t = dh.dtype.type
    M = dh.size // C
    dh3, xh3 = dh.reshape(N, C, -1), xhat.reshape(N, C, -1)
    g, b, s = _channels(gamma, C), _channels(beta, C), t(slope)
    dbeta = _per_channel(xp, "bn_act_dbeta", dh3, xh3, g, b, s)  # (C,)
    dgamma = _per_channel(xp, "bn_act_dgamma", dh3, xh3, g, b, s)  # (C,)
    da = dh if overwrite_dh and dh.flags.c_contiguous else xp.empty(dh.shape, dh.dtype)
    if train:
        kernels.get(xp, "bn_act_backward_train")(dh3, xh3, g, b, s, _channels(dgamma, C), _channels(dbeta, C),
                                                 _channels(inv_std, C), t(1.0 / M), da.reshape(N, C, -1))
    else:
        kernels.get(xp, "bn_act_backward_eval")(dh3, xh3, g, b, s, _channels(inv_std, C), da.reshape(N, C, -1))
    return da, dgamma, dbeta
