"""Dense (fully connected) layer, PyTorch layout ``W (D_out, D_in)``.

Forward:   a = x W^T + b
Backward:  dx = da W,   dW = da^T x,   db = sum_n da
"""

from __future__ import annotations

from typing import Any, NamedTuple


class DenseCache(NamedTuple):
    """What :func:`dense_backward` needs: the input, the weights, and whether there is a bias."""

    x: Any  # (N, D_in)
    W: Any  # (D_out, D_in)
    has_b: bool


def dense_forward(x, W, b=None):
    """``x (N, D_in)``, ``W (D_out, D_in)``, ``b (D_out,)`` or None -> ``a (N, D_out)``, cache."""
    a = x @ W.T  # (N, D_out)
    if b is not None:
        a += b
    return a, DenseCache(x, W, b is not None)


def dense_backward(dout, cache, need_dx: bool = True):
    """``dout (N, D_out)`` -> ``(dx or None, dW, db or None)``."""
    x, W, has_b = cache
    dW = dout.T @ x  # (D_out, D_in)
    db = dout.sum(axis=0) if has_b else None  # (D_out,)
    dx = dout @ W if need_dx else None  # (N, D_in)
    return dx, dW, db
