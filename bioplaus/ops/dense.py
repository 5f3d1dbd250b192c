"""Dense (fully connected) layer, PyTorch layout ``W (D_out, D_in)``.

Forward:   a = x W^T + b
Backward:  dx = da W,   dW = da^T x,   db = sum_n da
"""

from __future__ import annotations


def dense_forward(x, W, b=None):
    """``x (N, D_in)``, ``W (D_out, D_in)``, ``b (D_out,)`` or None -> ``a (N, D_out)``, cache."""
    a = x @ W.T  # (N, D_out)
    if b is not None:
        a += b
    return a, (x, W, b is not None)


def dense_backward(dout, cache, need_dx: bool = True):
    """``dout (N, D_out)`` -> ``(dx or None, dW, db or None)``."""
    x, W, has_b = cache
    dW = dout.T @ x  # (D_out, D_in)
    db = dout.sum(axis=0) if has_b else None  # (D_out,)
    dx = dout @ W if need_dx else None  # (N, D_in)
    return dx, dW, db
