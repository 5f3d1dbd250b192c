"""Solution of the lab exercise local_pred_error (pasted over the stub cell by tests/test_notebooks.py)."""

import numpy as np


def local_pred_error(h, dec_W, dec_b, y):
    """δh = ∂ CE(h dec_Wᵀ + dec_b, y) / ∂h.  h (N, D), dec_W (K, D), dec_b (K,), y (N,) ints -> (N, D)."""
    N = h.shape[0]
    logits = h @ dec_W.T + dec_b  # (N, K)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)  # (N, K) softmax
    p[np.arange(N), y] -= 1  # softmax - onehot
    dlogits = p / N  # (N, K)
    return dlogits @ dec_W  # (N, D): the error goes back through the decoder only
