"""Batch normalisation over the batch (dense: (N, D)) or over batch and space (conv: (N, C, H, W)).

Train mode, per feature/channel with M values (M = N, or N*H*W):
    mu = mean(x),  var = mean((x - mu)^2)  (biased),  xhat = (x - mu) / sqrt(var + eps)
    out = gamma * xhat + beta
    running_mean <- (1 - momentum) * running_mean + momentum * mu
    running_var  <- (1 - momentum) * running_var  + momentum * var * M / (M - 1)   (unbiased, as PyTorch)
    dx = gamma / sqrt(var + eps) / M * (M * dout - sum(dout) - xhat * sum(dout * xhat))
Eval mode: mu, var are the running statistics (constants), so dx = gamma / sqrt(var + eps) * dout.
Both modes: dgamma = sum(dout * xhat), dbeta = sum(dout).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from bioplaus.backend import get_array_module


class BatchNormCache(NamedTuple):
    """What :func:`batchnorm_backward` needs: the normalised input, the scale, 1/std and the mode."""

    xhat: Any  # like x
    gamma: Any  # (C,)
    inv_std: Any  # (C,)
    train: bool


def _axes_and_shape(x):
    if x.ndim == 2:
        return (0,), (1, x.shape[1])
    if x.ndim == 4:
        return (0, 2, 3), (1, x.shape[1], 1, 1)
    raise ValueError(f"batchnorm expects a (N, D) or (N, C, H, W) array, got shape {x.shape}")


def batchnorm_forward(x, gamma, beta, running_mean, running_var, train: bool, momentum=0.1, eps=1e-5):
    """-> ``out, cache, new_running_mean, new_running_var``. Inputs are never mutated.

    Blocks run BN fused with φ (:mod:`bioplaus.ops.bn_act`); this plain op is the reference the
    fused one is checked against.
    """
    xp = get_array_module(x)
    axes, pshape = _axes_and_shape(x)
    M = x.size // x.shape[1]
    if train:
        mu = x.mean(axis=axes)  # (C,)
        xc = x - mu.reshape(pshape)  # like x (ours: normalised in place below)
        var = _sum_of_products(xc, xc) * x.dtype.type(1.0 / M)  # (C,) biased, no squared temporary
        unbiased = var * var.dtype.type(M / max(M - 1, 1))
        new_mean = (1 - momentum) * running_mean + momentum * mu.astype(running_mean.dtype)
        new_var = (1 - momentum) * running_var + momentum * unbiased.astype(running_var.dtype)
    else:
        mu = running_mean.astype(x.dtype, copy=False)
        var = running_var.astype(x.dtype, copy=False)
        xc = x - mu.reshape(pshape)
        new_mean, new_var = running_mean, running_var
    inv_std = 1.0 / xp.sqrt(var + x.dtype.type(eps))  # (C,)
    xc *= inv_std.reshape(pshape)
    xhat = xc  # like x
    out = xhat * gamma.reshape(pshape)
    out += beta.reshape(pshape)
    cache = BatchNormCache(xhat, gamma, inv_std, train)
    return out, cache, new_mean, new_var


def batchnorm_backward(dout, cache):
    """``dout`` (like x) -> ``(dx, dgamma (C,), dbeta (C,))``."""
    xp = get_array_module(dout)
    xhat, gamma, inv_std, train = cache
    axes, pshape = _axes_and_shape(dout)
    dbeta = dout.sum(axis=axes)  # (C,)
    dgamma = _sum_of_products(dout, xhat)  # (C,)
    scale = (gamma * inv_std).reshape(pshape)  # (1, C[, 1, 1])
    if not train:
        return dout * scale, dgamma, dbeta
    M = dout.size // dout.shape[1]
    inv_m = dout.dtype.type(1.0 / M)
    dx = xhat * (dgamma * inv_m).reshape(pshape)  # one new array, then in-place passes
    xp.subtract(dout, dx, out=dx)
    dx -= (dbeta * inv_m).reshape(pshape)
    dx *= scale
    return dx, dgamma, dbeta


def _sum_of_products(a, b):
    """Per-channel sum of ``a * b`` over the batch (and space), without an ``a * b`` temporary. (C,)"""
    xp = get_array_module(a)
    if a.ndim == 2:
        return xp.einsum("nc,nc->c", a, b)
    return xp.einsum("nchw,nchw->c", a, b)
