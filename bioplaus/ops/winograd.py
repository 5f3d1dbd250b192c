"""3x3 convolution, stride 1, by Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray, 2016).

The same function as :func:`bioplaus.ops.conv.conv2d_forward` (cross-correlation, ``W (F, C, 3, 3)``,
NCHW) with fewer multiplications: the padded input is cut into overlapping tiles ``d`` of
``t x t = (m + 2) x (m + 2)`` pixels at stride m; each tile gives an ``m x m`` block of the output::

    Y_tile = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A        g: one 3x3 filter, ⊙: element-wise

Summed over input channels, the element-wise products become ``t²`` independent GEMMs
``M[k] = U[k] @ V[k]`` (k over the t² tile positions) with ``U = G g Gᵀ (t², F, C)`` and
``V = Bᵀ d B (t², C, P)``, P = tiles in the batch: ``t²/m² · 9`` times fewer multiplications than
im2col's one GEMM (4x for m = 4, 2.25x for m = 2), at the price of memory-bound transforms.
Each transform is one small GEMM with a Kronecker matrix (``vec(Bᵀ d B) = (Bᵀ ⊗ Bᵀ) vec(d)``,
row-major vec), so a device runs every step as one kernel.

Backward, from ``Y = Aᵀ M A`` and ``M = U ⊙ V`` (per tile, per position):

    δM = A δY Aᵀ          δU[k] = Σ_P δM[k] V[k]ᵀ  ->  δg = Gᵀ δU G  (summed over tiles: dW)
    δV[k] = U[k]ᵀ δM[k]  ->  δd = B δV Bᵀ, added into the overlapping tiles of δx

NOTE (numerics): the transforms' coefficients (up to 8 and 1/24 for m = 4) make the rounding error
larger than im2col's: about 1e-5 of the output's largest value in float32 for m = 4, 1e-6 for m = 2;
in float64 both agree with im2col to 1e-13. cuDNN's Winograd kernels make the same trade. Under
``CUPY_TF32=1`` the transforms' GEMMs run in TF32 as well (a 10-bit mantissa, amplified by those
coefficients): im2col is then the more accurate choice.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from bioplaus.backend import device_key, get_array_module

# Bᵀ, G, Aᵀ for F(m x m, 3 x 3), interpolation points 0, ±1 (m = 2) and 0, ±1, ±2 (m = 4), as in
# Lavin & Gray's paper and cuDNN
_MATRICES = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}
TILES = tuple(_MATRICES)  # the output tile sides m this op knows


class WinogradCache(NamedTuple):
    """What :func:`winograd_conv3x3_backward` needs: the transformed input tiles, W, the geometry."""

    V: Any  # (t², C, P): Bᵀ d B of every input tile
    W: Any  # (F, C, 3, 3)
    pad: int
    shape: tuple  # x's shape (N, C, H, W)
    m: int  # output tile side


def applies(W_shape: tuple, stride: int) -> bool:
    """True for the convolutions this op computes: 3x3 kernels at stride 1 (any padding)."""
    return tuple(W_shape[2:]) == (3, 3) and stride == 1


def buffer_bytes(x_shape: tuple, F: int, pad: int, m: int, itemsize: int) -> int:
    """The largest buffer the forward makes: the transformed tiles of the input or of the output."""
    N, C, H, Wd = x_shape
    th, tw = _tiles(H + 2 * pad - 2, m), _tiles(Wd + 2 * pad - 2, m)
    return (m + 2) ** 2 * max(C, F) * N * th * tw * itemsize


def _tiles(size: int, m: int) -> int:
    return -(-size // m)


@functools.cache
def _kron(m: int, dtype_name: str):
    """``(Bᵀ ⊗ Bᵀ (t², t²), G ⊗ G (t², 9), Aᵀ ⊗ Aᵀ (m², t²))`` on the host, made in float64."""
    BT, G, AT = (np.array(a, dtype=np.float64) for a in _MATRICES[m])
    return tuple(np.kron(a, a).astype(dtype_name) for a in (BT, G, AT))


@functools.cache
def _on_device(xp, key: tuple, m: int, dtype_name: str):
    return tuple(xp.asarray(a) for a in _kron(m, dtype_name))


def _matrices(xp, m: int, dtype):
    """The three transforms in ``dtype`` on ``xp``'s current device (copied there once per device)."""
    name = np.dtype(dtype).name
    return _kron(m, name) if xp is np else _on_device(xp, device_key(xp), m, name)


def _tile_view(xp, a, t: int, m: int, th: int, tw: int, rows: int = 0, cols: int = 0, size=None):
    """``a (C, N, Hp, Wp)`` -> the view ``(h, w, C, N, th, tw)``: position (r, c) of every tile,
    ``r`` in ``[rows, rows + h)`` and ``c`` in ``[cols, cols + w)``; ``size = (h, w)``, default t x t.
    Tiles overlap by t - m: a view over rows/cols that span more than m is only to be read."""
    h, w = size or (t, t)
    sc, sn, sh, sw = a.strides
    return xp.lib.stride_tricks.as_strided(
        a[:, :, rows:, cols:], shape=(h, w, a.shape[0], a.shape[1], th, tw),
        strides=(sh, sw, sc, sn, m * sh, m * sw))


def winograd_conv3x3_forward(x, W, pad: int = 1, m: int = 4):
    """``x (N, C, H, W)``, ``W (F, C, 3, 3)`` -> ``a (N, F, Ho, Wo)`` (no bias: the caller adds it), cache."""
    xp = get_array_module(x)
    N, C, H, Wd = x.shape
    F = W.shape[0]
    t = m + 2
    Ho, Wo = H + 2 * pad - 2, Wd + 2 * pad - 2
    th, tw = _tiles(Ho, m), _tiles(Wo, m)
    P = N * th * tw
    KB, KG, KA = _matrices(xp, m, x.dtype)
    # the padded input, channel-major, with zeros below and right up to whole tiles
    xt = xp.zeros((C, N, th * m + 2, tw * m + 2), dtype=x.dtype)
    xt[:, :, pad : pad + H, pad : pad + Wd] = x.transpose(1, 0, 2, 3)
    d = xp.ascontiguousarray(_tile_view(xp, xt, t, m, th, tw)).reshape(t * t, C * P)  # (t², C·P)
    del xt
    V = (KB @ d).reshape(t * t, C, P)  # (t², C, P)   Bᵀ d B of every tile
    del d
    U = (KG @ W.reshape(F * C, 9).T).reshape(t * t, F, C)  # (t², F, C)   G g Gᵀ of every filter
    M = xp.matmul(U, V)  # (t², F, P)   the t² GEMMs
    del U
    Y = (KA @ M.reshape(t * t, F * P)).reshape(m, m, F, N, th, tw)  # Aᵀ M A of every tile
    del M
    out = xp.empty((N, F, th * m, tw * m), dtype=x.dtype)
    out.reshape(N, F, th, m, tw, m)[...] = Y.transpose(3, 2, 4, 0, 5, 1)  # (N, F, th, m, tw, m)
    del Y
    if (Ho, Wo) != out.shape[2:]:  # the last tiles reach past the output
        out = xp.ascontiguousarray(out[:, :, :Ho, :Wo])
    return out, WinogradCache(V, W, pad, x.shape, m)


def winograd_conv3x3_backward(dout, cache: WinogradCache, need_dx: bool = True, overwrite_dout: bool = False):
    """``dout (N, F, Ho, Wo)`` -> ``(dx (N, C, H, W) or None, dW (F, C, 3, 3))``.
    ``overwrite_dout=True``: dx may be written into dout's buffer (the caller needs dout no more)."""
    xp = get_array_module(dout)
    V, W, pad, shape, m = cache
    N, C, H, Wd = shape
    F = W.shape[0]
    t = m + 2
    Ho, Wo = dout.shape[2], dout.shape[3]
    th, tw = _tiles(Ho, m), _tiles(Wo, m)
    P = N * th * tw
    KB, KG, KA = _matrices(xp, m, dout.dtype)
    # δY in tile order (m, m, F, N, th, tw), zeros beyond the output (the forward cropped them)
    dfull = dout
    if (Ho, Wo) != (th * m, tw * m):
        dfull = xp.zeros((N, F, th * m, tw * m), dtype=dout.dtype)
        dfull[:, :, :Ho, :Wo] = dout
    dY = xp.ascontiguousarray(dfull.reshape(N, F, th, m, tw, m).transpose(3, 5, 1, 0, 2, 4))
    del dfull
    dM = (KA.T @ dY.reshape(m * m, F * P)).reshape(t * t, F, P)  # (t², F, P)   A δY Aᵀ
    del dY
    dU = xp.matmul(dM, V.transpose(0, 2, 1))  # (t², F, C)
    dW = (KG.T @ dU.reshape(t * t, F * C)).reshape(3, 3, F, C).transpose(2, 3, 0, 1)  # (F, C, 3, 3)
    dW = xp.ascontiguousarray(dW)
    del dU
    dx = None
    if need_dx:
        U = (KG @ W.reshape(F * C, 9).T).reshape(t * t, F, C)
        dV = xp.matmul(U.transpose(0, 2, 1), dM)  # (t², C, P)
        del U, dM
        dd = (KB.T @ dV.reshape(t * t, C * P)).reshape(t, t, C, N, th, tw)  # B δV Bᵀ of every tile
        del dV
        # each tile's δd added into the padded δx; tiles overlap by 2, so in four parts that each
        # touch every position once (rows/cols [0, m) and [m, t) of the tiles)
        dxt = xp.zeros((C, N, th * m + 2, tw * m + 2), dtype=dout.dtype)
        for r0, rh in ((0, m), (m, 2)):
            for c0, cw in ((0, m), (m, 2)):
                part = _tile_view(xp, dxt, t, m, th, tw, r0, c0, (rh, cw))
                part += dd[r0 : r0 + rh, c0 : c0 + cw]  # in place, through the view
        del dd
        reuse = overwrite_dout and dout.shape == tuple(shape) and dout.flags.c_contiguous
        dx = dout if reuse else xp.empty(shape, dtype=dout.dtype)
        dx[...] = dxt[:, :, pad : pad + H, pad : pad + Wd].transpose(1, 0, 2, 3)
    return dx, dW
