"""Flatten a feature map to a matrix: (N, C, H, W) -> (N, C*H*W); backward reshapes back."""

from __future__ import annotations


def flatten_forward(x):
    """``x (N, ...)`` -> ``out (N, D)``, cache (the input shape)."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dout, cache):
    """``dout (N, D)`` -> ``dx`` of the input's shape."""
    return dout.reshape(cache)
