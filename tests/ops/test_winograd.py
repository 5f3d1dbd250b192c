"""Winograd's F(m x m, 3 x 3) convolution: forward vs the naive loop, backward vs float64 central
differences, in chunks of the batch as in one, its float32 rounding, and where ``conv2d_forward`` takes
it (every 3x3 stride-1 conv on a device; on the CPU, where the CPU's rule says)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from helpers import gradcheck, host, naive_conv, rand, rel_error

from bioplaus import backend, ops
from bioplaus.backend import device_paths_on_cpu
from bioplaus.ops import conv, winograd

WINOGRAD_CASES = [
    # N, C, H, W, F, pad
    (2, 3, 8, 8, 4, 1),  # whole tiles for m = 2 and m = 4
    (2, 3, 5, 7, 4, 1),  # the last tiles reach past the output (cropped), rectangular
    (1, 2, 7, 9, 3, 0),  # no padding
    (3, 2, 4, 6, 2, 2),  # more padding than the kernel's half
    (2, 5, 1, 1, 3, 1),  # a 1x1 map: one tile, mostly padding
    (2, 3, 6, 14, 4, 1),  # three and four tiles across (m = 4, m = 2): the output side of wide maps
]


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize("N,C,H,Wd,F,pad", WINOGRAD_CASES)
def test_winograd_forward_naive(xp, m, N, C, H, Wd, F, pad):
    rng = np.random.default_rng(H + Wd + pad)
    x, W = rand(rng, N, C, H, Wd), rand(rng, F, C, 3, 3)
    out, cache = winograd.winograd_conv3x3_forward(xp.asarray(x), xp.asarray(W), pad, m)
    assert isinstance(out, xp.ndarray) and isinstance(cache.V, xp.ndarray)
    assert rel_error(host(out), naive_conv(x, W, None, 1, pad)) < 1e-13


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize("N,C,H,Wd,F,pad", WINOGRAD_CASES)
def test_winograd_gradients(xp, m, N, C, H, Wd, F, pad):
    rng = np.random.default_rng(N + C + H + pad)
    gradcheck(
        xp,
        lambda x, W: winograd.winograd_conv3x3_forward(x, W, pad, m),
        lambda d, c: winograd.winograd_conv3x3_backward(d, c),
        [rand(rng, N, C, H, Wd), rand(rng, F, C, 3, 3)],
        [0, 1],
    )


@pytest.mark.parametrize("m,bound", [(2, 5e-6), (4, 5e-5)])
def test_winograd_float32_rounding(m, bound):
    """At a VGG layer's scale (64 -> 64 channels, 16x16), float32 results are within ``bound`` of the
    float64 convolution (relative to the largest value): the transforms' coefficients cost some
    digits, more for m = 4 than for m = 2, and im2col's own float32 error is far below both."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 64, 16, 16))
    W = rng.standard_normal((64, 64, 3, 3)) / 24.0
    d = rng.standard_normal((8, 64, 16, 16))
    ref_out, ref_cache = conv.conv2d_forward(x, W, None, 1, 1, "im2col")  # float64: exact to 1e-15 here
    ref_dx, ref_dW, _ = conv.conv2d_backward(d, ref_cache)
    f32 = [a.astype(np.float32) for a in (x, W, d)]
    out, cache = winograd.winograd_conv3x3_forward(f32[0], f32[1], 1, m)
    dx, dW = winograd.winograd_conv3x3_backward(f32[2], cache)
    assert out.dtype == dx.dtype == dW.dtype == np.float32
    errors = [float(np.abs(a - r).max() / np.abs(r).max()) for a, r in ((out, ref_out), (dx, ref_dx), (dW, ref_dW))]
    assert max(errors) < bound, errors
    im2col_out, _ = conv.conv2d_forward(f32[0], f32[1], None, 1, 1, "im2col")
    assert float(np.abs(im2col_out - ref_out).max() / np.abs(ref_out).max()) < bound / 5


def test_winograd_backward_can_write_dx_into_dout(xp):
    rng = np.random.default_rng(2)
    x, W, d = (xp.asarray(a) for a in (rand(rng, 2, 4, 6, 14), rand(rng, 4, 4, 3, 3), rand(rng, 2, 4, 6, 14)))
    for chunk in (None, 1):
        _, cache = winograd.winograd_conv3x3_forward(x, W, 1, 4, chunk)
        dx, dW = winograd.winograd_conv3x3_backward(d.copy(), cache)
        dout = d.copy()
        dx2, dW2 = winograd.winograd_conv3x3_backward(dout, cache, overwrite_dout=True)
        assert dx2 is dout  # no new array of x's size
        assert rel_error(host(dx2), host(dx)) == 0 and rel_error(host(dW2), host(dW)) == 0
        none, dW3 = winograd.winograd_conv3x3_backward(d, cache, need_dx=False)
        assert none is None and rel_error(host(dW3), host(dW)) == 0


# ------------------------------------------------------------------------ in chunks of the batch
@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
@pytest.mark.parametrize("N,C,H,Wd,F,pad", [(5, 3, 8, 8, 4, 1), (5, 2, 7, 13, 3, 0), (5, 3, 6, 5, 2, 2)])
def test_winograd_in_chunks_is_the_naive_convolution(xp, chunk, N, C, H, Wd, F, pad):
    """Chunks of 1, 2 and 3 of 5 samples (a last, shorter chunk) and of the whole batch: the forward
    against the naive loop, and the backward against the unchunked one, in float64."""
    rng = np.random.default_rng(chunk + H)
    x, W, d = rand(rng, N, C, H, Wd), rand(rng, F, C, 3, 3), rand(rng, N, F, H + 2 * pad - 2, Wd + 2 * pad - 2)
    out, cache = winograd.winograd_conv3x3_forward(xp.asarray(x), xp.asarray(W), pad, 4, chunk)
    assert cache.chunk == chunk
    assert (cache.V is None) is (chunk < N) and (cache.x is None) is (chunk == N)  # several: x kept, V rebuilt
    assert rel_error(host(out), naive_conv(x, W, None, 1, pad)) < 1e-13
    _, ref_cache = winograd.winograd_conv3x3_forward(xp.asarray(x), xp.asarray(W), pad, 4)
    dx, dW = winograd.winograd_conv3x3_backward(xp.asarray(d), cache)
    ref_dx, ref_dW = winograd.winograd_conv3x3_backward(xp.asarray(d), ref_cache)
    assert rel_error(host(dx), host(ref_dx)) < 1e-13 and rel_error(host(dW), host(ref_dW)) < 1e-13


def test_winograd_gradients_in_chunks():
    rng = np.random.default_rng(11)
    gradcheck(
        np,
        lambda x, W: winograd.winograd_conv3x3_forward(x, W, 1, 4, 2),
        lambda d, c: winograd.winograd_conv3x3_backward(d, c),
        [rand(rng, 3, 2, 5, 6), rand(rng, 3, 2, 3, 3)],
        [0, 1],
    )


class _FakeBLAS:
    """threadpoolctl's view of the BLAS as in_chunks asks it (8 threads; the limit a no-op)."""

    def info(self):
        return [{"num_threads": 8}]

    def limit(self, limits):
        return contextlib.nullcontext()


@pytest.mark.parametrize("chunk", [1, None])  # four chunks side by side; one chunk, its copies split
def test_winograd_on_several_threads_gives_the_same_numbers(chunk, monkeypatch):
    """Chunks run side by side (backend.in_chunks, δU added in chunk order) and one chunk's layout passes
    run in slices (backend.in_parts): the same numbers, bit for bit, as on one thread."""
    rng = np.random.default_rng(3)
    x, W, d = (rand(rng, 4, 6, 9, 13).astype(np.float32), rand(rng, 5, 6, 3, 3).astype(np.float32),
               rand(rng, 4, 5, 9, 13).astype(np.float32))
    runs, used = [], []
    real_chunks, real_parts = backend.in_chunks, backend.in_parts
    monkeypatch.setattr(backend, "_blas_libraries", _FakeBLAS())
    monkeypatch.setattr(backend, "PART_MIN", 1)
    for threads in (1, 3):
        monkeypatch.setattr(backend, "cpu_threads", lambda n=threads: n)
        seen = {"workers": 0, "slices": 0}

        def chunks(xp, count, body, seen=seen):
            seen["workers"] = max(seen["workers"], real_chunks(xp, count, body))

        def parts(xp, n, body, items=0, seen=seen):
            real_parts(xp, n, lambda lo, hi: (seen.__setitem__("slices", seen["slices"] + 1), body(lo, hi)), items)

        monkeypatch.setattr(winograd, "in_chunks", chunks)
        monkeypatch.setattr(winograd, "in_parts", parts)
        out, cache = winograd.winograd_conv3x3_forward(x, W, 1, 4, chunk)
        runs.append((out, *winograd.winograd_conv3x3_backward(d, cache)))
        used.append(seen)
    assert used[0] == {"workers": 1, "slices": 4 if chunk is None else 20}  # passes, one slice each
    if chunk is None:  # one chunk (its V kept for the backward): in one thread, its passes in slices
        assert used[1]["workers"] == 1 and used[1]["slices"] > 4
    else:  # chunks side by side: the passes inside them in one piece
        assert used[1] == {"workers": 3, "slices": 20}
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_chunks_side_by_side_add_in_chunk_order(monkeypatch):
    """Float32 sums depend on their order: (1e8 + 1) - 1e8 is 0, (1e8 - 1e8) + 1 is 1. The last chunk
    finishing first still adds last."""
    import time

    from bioplaus.backend import InOrder

    monkeypatch.setattr(backend, "_blas_libraries", _FakeBLAS())
    monkeypatch.setattr(backend, "cpu_threads", lambda: 3)
    parts = [np.float32(1e8), np.float32(1), np.float32(-1e8)]
    total = InOrder()

    def body(k, worker):
        time.sleep(0.05 * (2 - k))  # chunk 2 first, chunk 0 last
        total.add(k, np.array([parts[k]]))

    assert backend.in_chunks(np, 3, body) == 3
    assert total.total[0] == 0.0


def test_in_parts_covers_the_range_once_in_contiguous_slices(monkeypatch):
    monkeypatch.setattr(backend, "cpu_threads", lambda: 3)
    for n, items, parts in ((10, 10 * backend.PART_MIN, 3), (2, 10 * backend.PART_MIN, 2), (10, 100, 1)):
        seen = []
        backend.in_parts(np, n, lambda lo, hi, seen=seen: seen.append((lo, hi)), items)
        assert len(seen) == parts and sorted(i for lo, hi in seen for i in range(lo, hi)) == list(range(n))
    with device_paths_on_cpu():  # a device: one call over everything
        seen = []
        backend.in_parts(np, 10, lambda lo, hi: seen.append((lo, hi)), 10 * backend.PART_MIN)
        assert seen == [(0, 10)]


# ------------------------------------------------------------------------ where conv2d takes it
def _conv_case(rng, C=3, F=4, k=3, size=6):
    return rand(rng, 2, C, size, size), rand(rng, F, C, k, k), rand(rng, F)


# Where each CPU rule takes Winograd, by (input channels, map side, kernel, stride); a rule is never
# changed once runs have recorded it (a resume computes as the run began), so these stay true.
RULE_CASES = [
    (16, 4, 3, 1, {"auto-cpu-1": True, "auto-cpu-2": True}),  # the fewest channels; a 4x4 map: one whole tile
    (16, 7, 3, 1, {"auto-cpu-1": True, "auto-cpu-2": True}),  # 7x7: 3.06x fewer multiplications
    (15, 8, 3, 1, {"auto-cpu-1": False, "auto-cpu-2": False}),  # a first conv (1 or 3 channels): im2col
    (16, 3, 3, 1, {"auto-cpu-1": False, "auto-cpu-2": True}),  # a 3x3 map: 2.25x fewer multiplications
    (16, 2, 3, 1, {"auto-cpu-1": False, "auto-cpu-2": False}),  # a 2x2 map: as many
    (32, 8, 3, 2, {}), (32, 8, 1, 1, {})]  # only 3x3 stride-1 kernels, under any rule


def test_every_cpu_rule_has_its_cases_and_auto_is_the_newest():
    assert {r for *_, want in RULE_CASES for r in want} == set(conv.AUTO_RULES)
    newest = max(conv.AUTO_RULES, key=lambda r: int(r.rsplit("-", 1)[1]))
    assert conv.resolve_algorithm("auto", gpu=False) == conv.AUTO["cpu"] == newest


@pytest.mark.parametrize("rule", sorted(conv.AUTO_RULES))
@pytest.mark.parametrize("C,size,k,stride,expected", RULE_CASES)
def test_auto_on_the_cpu_follows_the_cpu_rule(rule, C, size, k, stride, expected):
    """A CPU rule: Winograd where it measured faster (conv.AUTO_RULES), else im2col; either way the
    convolution of im2col. "auto" on the CPU is today's rule."""
    expected = expected.get(rule, False)
    assert [conv.winograd_saving((1, 1, s, s), 1) for s in (2, 3, 4, 7, 8, 14, 28, 32)] == \
        [1.0, 2.25, 4.0, 441 / 144, 4.0, 1764 / 576, 4.0, 4.0]
    rng = np.random.default_rng(C + size)
    x, W, b = _conv_case(rng, C=C, k=k, size=size)
    ref_out, ref_cache = ops.conv2d_forward(x, W, b, stride, k // 2, "im2col")
    R = rand(rng, *ref_out.shape)
    ref_grads = ops.conv2d_backward(R.copy(), ref_cache)
    for algorithm in (rule, "auto") if rule == conv.AUTO["cpu"] else (rule,):
        out, cache = ops.conv2d_forward(x, W, b, stride, k // 2, algorithm)
        assert isinstance(cache, conv.WinogradConv) is expected
        assert rel_error(out, ref_out) < 1e-13
        for g, r in zip(ops.conv2d_backward(R.copy(), cache), ref_grads):
            assert rel_error(g, r) < 1e-13


@pytest.mark.parametrize("k,stride,winograd_expected", [(3, 1, True), (3, 2, False), (1, 1, False), (7, 1, False)])
def test_conv2d_on_device_paths_runs_3x3_stride_1_by_winograd(k, stride, winograd_expected):
    rng = np.random.default_rng(1)
    x, W, b = _conv_case(rng, k=k)
    ref_out, ref_cache = ops.conv2d_forward(x, W, b, stride, k // 2, "im2col")
    R = rand(rng, *ref_out.shape)
    ref_grads = ops.conv2d_backward(R.copy(), ref_cache)
    with device_paths_on_cpu():
        assert conv.resolve_algorithm("auto", gpu=True) == conv.AUTO["gpu"] == "winograd"
        out, cache = ops.conv2d_forward(x, W, b, stride, k // 2)
        grads = ops.conv2d_backward(R.copy(), cache, overwrite_dout=True)
    assert isinstance(cache, conv.WinogradConv) is winograd_expected
    if winograd_expected:
        assert cache.wino.chunk == x.shape[0]  # a device: the whole batch at once
    assert cache.shape == x.shape  # what a rule's own carry reads (rules._carry)
    assert rel_error(out, ref_out) < 1e-13
    for g, r in zip(grads, ref_grads):
        assert rel_error(g, r) < 1e-13


@pytest.mark.parametrize("device_paths", [False, True])
def test_conv2d_algorithm_asked_for(device_paths, monkeypatch):
    """"im2col" and "winograd" hold on either paths; past the buffer limits Winograd runs in chunks
    (of one sample at the least), as im2col does; an unknown name is an error, not a silent choice."""
    x, W, b = _conv_case(np.random.default_rng(2))
    ref = ops.conv2d_forward(x, W, b, 1, 1, "im2col")[0]
    with device_paths_on_cpu() if device_paths else contextlib.nullcontext():
        assert isinstance(ops.conv2d_forward(x, W, b, 1, 1, "im2col")[1], conv.ConvCache)
        out, cache = ops.conv2d_forward(x, W, b, 1, 1, "winograd")
        assert isinstance(cache, conv.WinogradConv) and rel_error(out, ref) < 1e-13
        assert isinstance(ops.conv2d_forward(x, W, b, 2, 1, "winograd")[1], conv.ConvCache)  # stride 2: no
        with pytest.raises(ValueError, match="unknown algorithm"):
            ops.conv2d_forward(x, W, b, 1, 1, "fft")
        for name in ("DEVICE_IM2COL_MAX_BYTES", "IM2COL_MAX_BYTES", "WINOGRAD_MAX_BYTES", "WINOGRAD_MIN_TILES"):
            monkeypatch.setattr(conv, name, 1)
        out, cache = ops.conv2d_forward(x, W, b, 1, 1, "winograd")
    assert isinstance(cache, conv.WinogradConv) and cache.wino.chunk == 1 and rel_error(out, ref) < 1e-13


def test_winograd_chunks_on_the_cpu_hold_enough_tiles_within_the_limits():
    """A chunk is as large as WINOGRAD_MAX_BYTES allows for its largest buffer, or as WINOGRAD_MIN_TILES
    needs (thin GEMMs run slowly), whichever is more, and never past the batch or IM2COL_MAX_BYTES;
    on a device, the whole batch where its limit allows."""
    for shape, F in (((128, 128, 32, 32), 256), ((128, 512, 4, 4), 512), ((128, 32, 28, 28), 64),
                     ((128, 256, 16, 16), 512), ((128, 64, 96, 96), 64), ((3, 8, 8, 8), 8)):
        N = shape[0]
        chunk = conv.winograd_chunk(shape, F, 1, 4)
        per_sample = winograd.sample_bytes(shape, F, 1, conv.WINOGRAD_TILE, 4)
        tiles = winograd.tiles_per_sample(shape, 1, conv.WINOGRAD_TILE)
        assert 1 <= chunk <= N and chunk * per_sample <= conv.IM2COL_MAX_BYTES, shape
        if chunk < N and (chunk + 1) * per_sample <= conv.IM2COL_MAX_BYTES:  # neither the batch nor the cap
            assert (chunk + 1) * per_sample > conv.WINOGRAD_MAX_BYTES and chunk * tiles >= conv.WINOGRAD_MIN_TILES
            assert chunk * per_sample <= conv.WINOGRAD_MAX_BYTES or (chunk - 1) * tiles < conv.WINOGRAD_MIN_TILES
        assert conv.winograd_chunk(shape, F, 1, 4, device_limit=2**40) == N
        assert conv.winograd_chunk(shape, F, 1, 4, device_limit=per_sample) == 1
