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

Memory: the batch runs in chunks of ``chunk`` samples (the caller sizes them, as im2col's; on a GPU
one chunk is the whole batch). Every chunk reuses the same few buffers: a zero-bordered padded copy
of its input, the gathered tiles, V, M and Y.
One chunk keeps V for the backward; several keep only x and rebuild each chunk's V there (peak memory
about one chunk's buffers above the layer's input and output, as im2col's).

Layouts: NumPy copies fastest when the innermost axis of a copy is long, and the tiles' own axes are
short (4 or 6 pixels, a few tiles across), so inside the op everything is channels-last: ``x`` is
padded into ``(n, Hp, Wp, C)``, its tiles gathered into ``V (t², P, C)`` (P = the chunk's tiles in
image order), ``M (t², P, F)`` and ``Y (m², P, F)`` are written into a channels-last output and that
into NCHW; the backward runs the same way back. Every copy then moves runs of C or F channels, or
reads or writes whole image rows (1-1.5 ns an element on one core, where the tiles' own runs of 4
took 2-3). Every GEMM reads its operands in place (transposed where the layout asks; BLAS takes either).

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

from bioplaus.backend import InOrder, device_key, get_array_module, in_chunks, in_parts

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
    """What :func:`winograd_conv3x3_backward` needs: V (one chunk) or x (several), W, the geometry."""

    V: Any  # (t², N·th·tw, C): Bᵀ d B of every input tile, when the batch ran in one chunk; else None
    x: Any  # (N, C, H, W) when the batch ran in chunks (V rebuilt per chunk); else None
    W: Any  # (F, C, 3, 3)
    pad: int
    shape: tuple  # x's shape (N, C, H, W)
    m: int  # output tile side
    chunk: int  # samples per chunk


class _Geometry(NamedTuple):
    C: int
    H: int
    W: int
    F: int
    pad: int
    m: int
    t: int  # tile side m + 2
    Ho: int
    Wo: int
    th: int  # tiles down
    tw: int  # tiles across


def _geometry(x_shape: tuple, F: int, pad: int, m: int) -> _Geometry:
    _, C, H, Wd = x_shape
    Ho, Wo = H + 2 * pad - 2, Wd + 2 * pad - 2
    return _Geometry(C, H, Wd, F, pad, m, m + 2, Ho, Wo, _tiles(Ho, m), _tiles(Wo, m))


def applies(W_shape: tuple, stride: int) -> bool:
    """True for the convolutions this op computes: 3x3 kernels at stride 1 (any padding)."""
    return tuple(W_shape[2:]) == (3, 3) and stride == 1


def sample_bytes(x_shape: tuple, F: int, pad: int, m: int, itemsize: int) -> int:
    """Bytes per sample of the largest buffer a chunk makes: the transformed tiles of its input
    (t² C per tile) or of its output (t² F per tile)."""
    g = _geometry(x_shape, F, pad, m)
    return g.t * g.t * max(g.C, F) * g.th * g.tw * itemsize


def tiles_per_sample(x_shape: tuple, pad: int, m: int) -> int:
    """Tiles of one sample's output."""
    g = _geometry(x_shape, 1, pad, m)
    return g.th * g.tw


def buffer_bytes(x_shape: tuple, F: int, pad: int, m: int, itemsize: int, chunk: int | None = None,
                 workers: int = 1) -> int:
    """Bytes of the buffers the op holds at once for chunks of ``chunk`` samples (default: the whole
    batch), ``workers`` chunks at a time; the backward's, which are the most: per chunk at work the
    padded input (then δx), the gathered tiles (then δY, δV), V (then B δV Bᵀ), M (then δM) and its part
    of δU; and U and δU."""
    g = _geometry(x_shape, F, pad, m)
    n = x_shape[0] if chunk is None else min(chunk, x_shape[0])
    filters = g.t * g.t * F * g.C
    parts = workers if n < x_shape[0] else 0  # one chunk: its part of δU is δU
    return itemsize * (workers * sum(_sizes(g, n).values()) + (parts + 2) * filters)


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


def _filter_transform(KG, W):
    """``U = G g Gᵀ`` of every filter: (t², F, C)."""
    F, C = W.shape[0], W.shape[1]
    return (KG @ W.reshape(F * C, 9).T).reshape(KG.shape[0], F, C)


def _sizes(g: _Geometry, n: int) -> dict:
    """Elements of each buffer for a chunk of n samples. ``d`` holds the gathered tiles, then (once V
    is made from them) Y or δY, then δV: the largest of t² C and m² F per tile; ``M`` holds M, then
    the channels-last output (or δY's), then δM; ``xpad`` the padded input, then δx."""
    tiles = n * g.th * g.tw
    return {"xpad": n * (g.th * g.m + 2) * (g.tw * g.m + 2) * g.C,
            "d": max(g.t * g.t * g.C, g.m * g.m * g.F) * tiles, "V": g.t * g.t * g.C * tiles,
            "M": g.t * g.t * g.F * tiles}


def _alloc(xp, dtype, g: _Geometry, chunk: int, names) -> dict:
    """Flat buffers for chunks of up to ``chunk`` samples."""
    sizes = _sizes(g, chunk)
    return {k: xp.empty(sizes[k], dtype=dtype) for k in names}


def _buffer(buf, shape: tuple):
    """The first elements of the flat buffer ``buf`` as a contiguous array of ``shape``."""
    return buf[: int(np.prod(shape))].reshape(shape)


def _tile_view(xp, a, t: int, m: int, th: int, tw: int, rows: int = 0, cols: int = 0, size=None):
    """``a (n, Hp, Wp, C)`` -> the view ``(h, w, n, th, tw, C)``: position (r, c) of every tile,
    ``r`` in ``[rows, rows + h)`` and ``c`` in ``[cols, cols + w)``; ``size = (h, w)``, default t x t.
    Tiles overlap by t - m: a view over rows/cols that span more than m is only to be read."""
    h, w = size or (t, t)
    sn, sh, sw, sc = a.strides
    return xp.lib.stride_tricks.as_strided(
        a[:, rows:, cols:], shape=(h, w, a.shape[0], th, tw, a.shape[3]),
        strides=(sh, sw, sn, m * sh, m * sw, sc))


def _input_tiles(xp, x, KB, g: _Geometry, bufs: dict):
    """``x (n, C, H, W)`` -> ``V (t², n·th·tw, C)``: Bᵀ d B of every tile (one GEMM), in ``bufs["V"]``."""
    n = x.shape[0]
    t, m, pad = g.t, g.m, g.pad
    xpad = _buffer(bufs["xpad"], (n, g.th * m + 2, g.tw * m + 2, g.C))  # (the backward's δx uses it too)
    d = _buffer(bufs["d"], (t, t, n, g.th, g.tw, g.C))
    tiles = _tile_view(xp, xpad, t, m, g.th, g.tw)

    def samples(lo: int, hi: int) -> None:  # pad channels-last, then gather the tiles, a few samples at a time
        part = xpad[lo:hi]
        part[:, :pad] = 0
        part[:, pad + g.H :] = 0
        part[:, :, :pad] = 0
        part[:, :, pad + g.W :] = 0
        part[:, pad : pad + g.H, pad : pad + g.W] = x[lo:hi].transpose(0, 2, 3, 1)
        d[:, :, lo:hi] = tiles[:, :, lo:hi]

    in_parts(xp, n, samples, d.size)
    P = n * g.th * g.tw
    V = xp.matmul(KB, d.reshape(t * t, P * g.C), out=_buffer(bufs["V"], (t * t, P * g.C)))
    return V.reshape(t * t, P, g.C)


def winograd_conv3x3_forward(x, W, pad: int = 1, m: int = 4, chunk: int | None = None):
    """``x (N, C, H, W)``, ``W (F, C, 3, 3)`` -> ``a (N, F, Ho, Wo)`` (no bias: the caller adds it), cache.
    ``chunk``: samples per chunk (default: the whole batch at once); chunks run side by side on the
    CPU's threads (:func:`bioplaus.backend.in_chunks`), each with its own buffers."""
    xp = get_array_module(x)
    N = x.shape[0]
    F = W.shape[0]
    g = _geometry(x.shape, F, pad, m)
    t = g.t
    chunk = N if chunk is None else max(1, min(N, int(chunk)))
    chunks = -(-N // chunk)
    KB, KG, KA = _matrices(xp, m, x.dtype)
    Ut = _filter_transform(KG, W).transpose(0, 2, 1)  # (t², C, F)   G g Gᵀ of every filter
    out = xp.empty((N, F, g.Ho, g.Wo), dtype=x.dtype)
    bufs: dict = {}
    kept = []

    def one_chunk(k: int, worker: int) -> None:
        n0, n1 = k * chunk, min(N, (k + 1) * chunk)
        P = (n1 - n0) * g.th * g.tw
        b = bufs.get(worker) or bufs.setdefault(worker, _alloc(xp, x.dtype, g, chunk, ("xpad", "d", "V", "M")))
        V = _input_tiles(xp, x[n0:n1], KB, g, b)  # (t², P, C)   Bᵀ d B of every tile
        M = xp.matmul(V, Ut, out=_buffer(b["M"], (t * t, P, F)))  # (t², P, F)   the t² GEMMs
        Y = xp.matmul(KA, M.reshape(t * t, P * F), out=_buffer(b["d"], (m * m, P * F)))  # Aᵀ M A
        _tiles_to_image(xp, Y, out[n0:n1], g, b)
        if chunks == 1:
            kept.append(V)

    in_chunks(xp, chunks, one_chunk)
    if chunks == 1:  # one chunk: its V (in a buffer of its own size) is kept for the backward
        return out, WinogradCache(kept[0], None, W, pad, x.shape, m, chunk)
    return out, WinogradCache(None, x, W, pad, x.shape, m, chunk)


def _tiles_to_image(xp, Y, img, g: _Geometry, bufs: dict) -> None:
    """Writes ``img (n, F, Ho, Wo)`` from the tiles ``Y (m², P·F)``: channels-last first (in M's buffer,
    free by now), then NCHW, cropping the last tiles."""
    n, F, m = img.shape[0], g.F, g.m
    tiles = Y.reshape(m, m, n, g.th, g.tw, F)
    last = _buffer(bufs["M"], (n, g.th, m, g.tw, m, F))

    def samples(lo: int, hi: int) -> None:
        last[lo:hi] = tiles[:, :, lo:hi].transpose(2, 3, 0, 4, 1, 5)
        img[lo:hi] = last[lo:hi].reshape(hi - lo, g.th * m, g.tw * m, F)[:, : g.Ho, : g.Wo].transpose(0, 3, 1, 2)

    in_parts(xp, n, samples, img.size)


def _image_to_tiles(xp, img, g: _Geometry, bufs: dict):
    """``img (n, F, Ho, Wo)`` -> δY ``(m², P·F)`` in ``bufs["d"]``: channels-last first (in M's buffer;
    δM is made after), zeros where a tile reaches past the image."""
    n, F, m = img.shape[0], g.F, g.m
    tiles = _buffer(bufs["d"], (m, m, n, g.th, g.tw, F))
    last = _buffer(bufs["M"], (n, g.th * m, g.tw * m, F))
    crop = (g.Ho, g.Wo) != (g.th * m, g.tw * m)

    def samples(lo: int, hi: int) -> None:
        if crop:
            last[lo:hi, g.Ho :] = 0
            last[lo:hi, :, g.Wo :] = 0
        last[lo:hi, : g.Ho, : g.Wo] = img[lo:hi].transpose(0, 2, 3, 1)
        tiles[:, :, lo:hi] = last[lo:hi].reshape(hi - lo, g.th, m, g.tw, m, F).transpose(2, 4, 0, 1, 3, 5)

    in_parts(xp, n, samples, img.size)
    return tiles.reshape(m * m, n * g.th * g.tw * F)


def winograd_conv3x3_backward(dout, cache: WinogradCache, need_dx: bool = True, overwrite_dout: bool = False):
    """``dout (N, F, Ho, Wo)`` -> ``(dx (N, C, H, W) or None, dW (F, C, 3, 3))``, chunk by chunk as
    the forward ran (side by side on the CPU's threads; δU summed in chunk order, so the numbers do
    not depend on how many). ``overwrite_dout=True``: dx may be written into dout's buffer (the caller
    needs dout no more): each chunk's dx goes over that chunk's dout once its δY has been read."""
    xp = get_array_module(dout)
    V_all, x, W, pad, shape, m, chunk = cache
    N = shape[0]
    F = W.shape[0]
    g = _geometry(shape, F, pad, m)
    t, C = g.t, g.C
    chunks = -(-N // chunk)
    KB, KG, KA = _matrices(xp, m, dout.dtype)
    rebuild = V_all is None
    names = ("d", "M") + (("xpad", "V") if rebuild or need_dx else ())
    dx = U = None
    if need_dx:
        U = _filter_transform(KG, W)  # (t², F, C)
        reuse = overwrite_dout and dout.shape == tuple(shape) and dout.flags.c_contiguous
        dx = dout if reuse else xp.empty(shape, dtype=dout.dtype)  # (N, C, H, W)
    bufs: dict = {}
    dU = InOrder()  # δU = Σ_P δMᵀ V, chunk by chunk, in chunk order

    def one_chunk(k: int, worker: int) -> None:
        n0, n1 = k * chunk, min(N, (k + 1) * chunk)
        n = n1 - n0
        P = n * g.th * g.tw
        b = bufs.get(worker) or bufs.setdefault(worker, _alloc(xp, dout.dtype, g, chunk, names))
        try:
            V = _input_tiles(xp, x[n0:n1], KB, g, b) if rebuild else V_all  # (t², P, C)
            dY = _image_to_tiles(xp, dout[n0:n1], g, b)  # δY (m², P·F)
            dM = xp.matmul(KA.T, dY, out=_buffer(b["M"], (t * t, P * F))).reshape(t * t, P, F)  # A δY Aᵀ
            part = xp.matmul(dM.transpose(0, 2, 1), V, out=b.get("part"))  # (t², F, C)
            b["part"] = part
            if need_dx:
                dV = xp.matmul(dM, U, out=_buffer(b["d"], (t * t, P, C)))  # (t², P, C)
                # B δV Bᵀ of every tile, into V's buffer (this chunk's V is used up)
                dd = xp.matmul(KB.T, dV.reshape(t * t, P * C), out=_buffer(b["V"], (t * t, P * C)))
                dxpad = _buffer(b["xpad"], (n, g.th * m + 2, g.tw * m + 2, C))
                _tiles_to_dx(xp, dd.reshape(t, t, n, g.th, g.tw, C), dxpad, dx[n0:n1], g)
            dU.add(k, part, take=chunks == 1)
        except BaseException:
            dU.fail()
            raise

    in_chunks(xp, chunks, one_chunk)
    dW = (KG.T @ dU.total.reshape(t * t, F * C)).reshape(3, 3, F, C).transpose(2, 3, 0, 1)  # (F, C, 3, 3)
    return dx, xp.ascontiguousarray(dW)


def _tiles_to_dx(xp, dd, dxpad, dx, g: _Geometry) -> None:
    """``dx (n, C, H, W)`` from every tile's ``dd (t, t, n, th, tw, C)``: each padded pixel gets the sum
    over the tiles that cover it (in ``dxpad (n, Hp, Wp, C)``, channels-last), then the padding is cut
    off. Tiles overlap by 2: their first m rows and columns cover the padded image's first ``th m`` x
    ``tw m`` once (written), their last two fall onto the next tiles' first ones (added), and the padded
    image's last two rows and columns get only those (zeroed first)."""
    m, t, th, tw, pad = g.m, g.t, g.th, g.tw, g.pad

    def samples(lo: int, hi: int) -> None:
        dpad, part = dxpad[lo:hi], dd[:, :, lo:hi]
        dpad[:, th * m :] = 0
        dpad[:, :, tw * m :] = 0
        _tile_view(xp, dpad, t, m, th, tw, 0, 0, (m, m))[...] = part[:m, :m]
        for r0, rh, c0, cw in ((m, 2, 0, m), (0, m, m, 2), (m, 2, m, 2)):
            view = _tile_view(xp, dpad, t, m, th, tw, r0, c0, (rh, cw))
            view += part[r0 : r0 + rh, c0 : c0 + cw]  # in place, through the view
        dx[lo:hi] = dpad[:, pad : pad + g.H, pad : pad + g.W].transpose(0, 3, 1, 2)

    in_parts(xp, dx.shape[0], samples, dd.size)
