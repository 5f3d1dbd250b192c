"""Losses, each returning ``(loss, dlogits)`` with the loss a 0-d array left on the device.

Softmax cross-entropy (mean over the batch of N):
    L = 1/N sum_n [logsumexp(z_n) - z_n[y_n]],      dz = (softmax(z) - onehot(y)) / N
Sigmoid binary cross-entropy with logits (mean over all E entries), stable form:
    L = 1/E sum [max(z, 0) - z t + log(1 + exp(-|z|))],   dz = (sigmoid(z) - t) / E
Mean squared error (mean over all E entries):
    L = 1/E sum (p - t)^2,                          dp = 2 (p - t) / E
"""

from __future__ import annotations

from bioplaus.backend import get_array_module
from bioplaus.ops import kernels


def _log_softmax(logits):
    xp = get_array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)  # (N, K)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))  # (N, K)


def softmax_cross_entropy_forward(logits, y):
    """Forward only: mean cross-entropy of ``logits (N, K)`` against int labels ``y (N,)``."""
    xp = get_array_module(logits)
    logp = _log_softmax(logits)
    N = logits.shape[0]
    return xp.asarray(-logp[xp.arange(N), y].mean())


def softmax_cross_entropy(logits, y):
    """``logits (N, K)``, int labels ``y (N,)`` -> ``(loss 0-d, dlogits (N, K))``."""
    xp = get_array_module(logits)
    if kernels.available(xp) and logits.dtype.kind == "f" and logits.size:  # a GPU: one kernel
        return kernels.softmax_cross_entropy(xp, logits, y)
    N = logits.shape[0]
    logp = _log_softmax(logits)  # (N, K)
    rows = xp.arange(N)
    loss = xp.asarray(-logp[rows, y].mean())
    dlogits = xp.exp(logp)  # (N, K) softmax
    dlogits[rows, y] -= 1
    dlogits *= dlogits.dtype.type(1.0 / N)
    return loss, dlogits


def _sigmoid(z):
    xp = get_array_module(z)
    e = xp.exp(-xp.abs(z))  # in (0, 1], never overflows
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_bce_with_logits(logits, targets):
    """``logits``, ``targets`` in [0, 1] (same shape) -> ``(loss 0-d, dlogits)``; mean over all entries."""
    xp = get_array_module(logits)
    t = targets.astype(logits.dtype, copy=False)
    E = logits.size
    if kernels.available(xp):  # a GPU: one kernel and the mean
        terms, dlogits = kernels.get(xp, "sigmoid_bce")(logits, t, logits.dtype.type(1.0 / E))
        return xp.asarray(terms.mean()), dlogits
    terms = xp.maximum(logits, 0) - logits * t + xp.log1p(xp.exp(-xp.abs(logits)))
    loss = xp.asarray(terms.mean())
    dlogits = (_sigmoid(logits) - t) * logits.dtype.type(1.0 / E)
    return loss, dlogits


def mse(pred, target):
    """``pred``, ``target`` (same shape) -> ``(loss 0-d, dpred)``; mean over all entries."""
    xp = get_array_module(pred)
    if kernels.available(xp):  # a GPU: one kernel and the mean
        sq, dpred = kernels.get(xp, "mse")(pred, target, pred.dtype.type(2.0 / pred.size))
        return xp.asarray(sq.mean()), dpred
    diff = pred - target
    loss = xp.asarray((diff * diff).mean())
    return loss, diff * diff.dtype.type(2.0 / pred.size)


def count_correct(logits, y):
    """Number of rows whose argmax equals the label, as a 0-d int array on the device."""
    xp = get_array_module(logits)
    return xp.asarray((logits.argmax(axis=1) == y).sum())
