"""The mini-batch similarity matrix S(X) of the sim loss (Nøkland & Eidnes 2019, Sec. 3).

Forward:
    Z = std_{H*W}(X) (unbiased)  when X is (B, C, H, W) with C > 3 and H > 1  -> (B, C)
    Z = X.reshape(B, D)          otherwise (and always with ``use_std=False``: the authors' --no-similarity-std)
    Zc = Z - mean_row(Z);   d = 1e-8 + ||Zc||_row;   Zn = Zc / d
    R = Zn Zn^T;            S = clamp(R, -1, 1)
Backward (true gradient):
    dR = dS * [-1 <= R <= 1]                 (inclusive, like torch.clamp)
    dZn = (dR + dR^T) Zn
    dZc = dZn / d - Zc * sum_row(dZn * Zc) / (d^2 ||Zc||)
    dZ = dZc   (its row mean is already 0: Zn and Zc have zero-mean rows)
    std path: dX = dZ[..., None] * (X - mean) / (Z * (H*W - 1))

NOTE: the 1e-8 is added to the norm (not under the square root), as in the authors' code, so the
diagonal of S is slightly below 1 and sits just inside the clamp; the clamp only bites for
near-duplicate rows through rounding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from bioplaus.backend import get_array_module

_NORM_EPS = 1e-8


class StdCache(NamedTuple):
    """The std path's part of :class:`SimilarityCache`: the centred input, the stds, H*W, X's shape."""

    Xc: Any  # (B, C, HW)
    Z: Any  # (B, C)
    n: int  # H*W
    shape: tuple  # (B, C, H, W)


class SimilarityCache(NamedTuple):
    """What :func:`similarity_backward` needs: R before the clamp, Zc, its norms, Zn, the std path's cache."""

    R: Any  # (B, B)
    Zc: Any  # (B, D)
    nrm: Any  # (B, 1)
    d: Any  # (B, 1)
    Zn: Any  # (B, D)
    std_cache: StdCache | None
    shape: tuple  # X's shape


def _uses_std(X) -> bool:
    return X.ndim == 4 and X.shape[1] > 3 and X.shape[2] > 1


def similarity_forward(X, overwrite: bool = False, use_std: bool = True):
    """``X (B, ...)`` -> ``S (B, B)``, cache.

    ``overwrite=True``: the caller hands over ``X`` (contiguous, needed by nothing else); on the std
    path its buffer then holds the centred ``X - mean`` of the cache (no second feature map).
    """
    xp = get_array_module(X)
    B = X.shape[0]
    std_cache = None
    if use_std and _uses_std(X):
        C = X.shape[1]
        Xf = X.reshape(B, C, -1)  # (B, C, HW)
        n = Xf.shape[2]
        if overwrite and X.flags.c_contiguous:
            Xc = Xf  # a view of X: centred in place
            Xc -= Xf.mean(axis=2, keepdims=True)  # (B, C, HW)
        else:
            Xc = Xf - Xf.mean(axis=2, keepdims=True)  # (B, C, HW)
        Z = xp.sqrt(xp.einsum("bcn,bcn->bc", Xc, Xc) / X.dtype.type(n - 1))  # (B, C), no Xc*Xc temporary
        std_cache = StdCache(Xc, Z, n, X.shape)
    else:
        Z = X.reshape(B, -1)  # (B, D)
    Zc = Z - Z.mean(axis=1, keepdims=True)  # (B, D)
    nrm = xp.sqrt((Zc * Zc).sum(axis=1, keepdims=True))  # (B, 1)
    d = nrm + Z.dtype.type(_NORM_EPS)  # (B, 1)
    Zn = Zc / d  # (B, D)
    R = Zn @ Zn.T  # (B, B)
    S = xp.clip(R, -1, 1)
    return S, SimilarityCache(R, Zc, nrm, d, Zn, std_cache, X.shape)


def similarity_backward(dS, cache, overwrite: bool = False):
    """``dS (B, B)`` -> ``dX`` of the input's shape.

    ``overwrite=True``: the cache is used up; on the std path ``dX`` is computed in the buffer of the
    cached centred input (no new feature map). The cache must not be used again.
    """
    xp = get_array_module(dS)
    R, Zc, nrm, d, Zn, std_cache, shape = cache
    dR = dS * ((R >= -1) & (R <= 1))  # (B, B)
    dZn = (dR + dR.T) @ Zn  # (B, D)
    safe_nrm = xp.where(nrm > 0, nrm, 1)  # a constant row has Zc = 0: its second term is 0
    proj = (dZn * Zc).sum(axis=1, keepdims=True) / (d * d * safe_nrm)  # (B, 1)
    dZc = dZn / d - Zc * proj  # (B, D)
    # NOTE: the row-mean subtraction Zc = Z - mean(Z) would subtract mean_row(dZc), but that mean
    # is already 0 (every term is a combination of zero-mean rows of Zn and Zc), so dZ = dZc.
    dZ = dZc  # (B, D)
    if std_cache is None:
        return dZ.reshape(shape)
    Xc, Z, n, _ = std_cache
    safe_Z = xp.where(Z > 0, Z, 1)
    coef = dZ / (safe_Z * Z.dtype.type(n - 1))  # (B, C)
    # the mean subtraction's gradient vanishes here: sum over HW of Xc is 0
    if overwrite:
        Xc *= coef[..., None]
        return Xc.reshape(shape)
    return (Xc * coef[..., None]).reshape(shape)


def label_similarity(Y):
    """Target similarity of label rows ``Y (B, K)`` (one-hot or projected), forward only."""
    return similarity_forward(Y)[0]
