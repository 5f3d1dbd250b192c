"""Op caches are named records that still unpack by position (issue 13).

Every forward's cache is a ``typing.NamedTuple`` whose fields name what its backward reads, in the
order the backward unpacks them; the backward gives the same arrays, bit for bit, from the plain
tuple of the same values (so a caller that builds or slices a cache positionally keeps working).
"""

from __future__ import annotations

import numpy as np
import pytest

from bioplaus import ops

rng = np.random.default_rng(0)
X2, X4 = rng.standard_normal((6, 5)), rng.standard_normal((4, 5, 4, 4))
C = 5
GAMMA, BETA, RM, RV = rng.standard_normal(C), rng.standard_normal(C), np.zeros(C), np.ones(C)

# name: (forward() -> (out, cache), backward(dout, cache) -> arrays, the cache's fields)
CASES = {
    "dense": (lambda: ops.dense_forward(X2, rng.standard_normal((3, 5)), np.ones(3)), ops.dense_backward,
              ("x", "W", "has_b")),
    "conv": (lambda: ops.conv2d_forward(X4, rng.standard_normal((2, 5, 3, 3)), np.ones(2), 1, 1), ops.conv2d_backward,
             ("x", "cols", "W", "has_b", "stride", "pad", "shape", "chunk")),
    "activation": (lambda: ops.act_forward(X4, 0.01), ops.act_backward, ("positive", "slope")),
    "batchnorm": (lambda: ops.batchnorm_forward(X4, GAMMA, BETA, RM, RV, True)[:2], ops.batchnorm_backward,
                  ("xhat", "gamma", "inv_std", "train")),
    "bn_act": (lambda: ops.bn_act_forward(X4, GAMMA, BETA, RM, RV, True, 0.01)[:2], ops.bn_act_backward,
               ("xhat", "gamma", "beta", "inv_std", "slope", "train")),
    "maxpool": (lambda: ops.maxpool2d_forward(X4, 2), ops.maxpool2d_backward, ("idx", "shape", "k")),
    "maxpool3": (lambda: ops.maxpool2d_forward(X4, 3), ops.maxpool2d_backward, ("idx", "shape", "k")),
    "avgpool": (lambda: ops.avgpool2d_forward(X4, (2, 4), (1, 0)), ops.avgpool2d_backward, ("shape", "window", "pad")),
    "similarity": (lambda: ops.similarity_forward(X4), ops.similarity_backward,
                   ("R", "Zc", "nrm", "d", "Zn", "std_cache", "shape")),
    "similarity-dense": (lambda: ops.similarity_forward(X2), ops.similarity_backward,
                         ("R", "Zc", "nrm", "d", "Zn", "std_cache", "shape")),
}


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("name", list(CASES))
def test_cache_is_a_named_record_that_unpacks_by_position(name):
    forward, backward, fields = CASES[name]
    out, cache = forward()
    assert isinstance(cache, tuple) and type(cache) is not tuple
    assert type(cache)._fields == fields
    doc = type(cache).__doc__.strip()
    assert "\n" not in doc and not doc.startswith(type(cache).__name__ + "(")  # its own one-line docstring
    assert all(getattr(cache, f) is cache[i] for i, f in enumerate(fields))
    dout = np.random.default_rng(1).standard_normal(out.shape)
    named = as_tuple(backward(dout, cache))
    plain = as_tuple(backward(dout, tuple(cache)))
    assert len(named) == len(plain)
    for a, b in zip(named, plain):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_cache_fields_hold_what_they_name():
    W = rng.standard_normal((3, 5))
    _, dense = ops.dense_forward(X2, W, None)
    assert dense.x is X2 and dense.W is W and dense.has_b is False
    _, one_chunk = ops.conv2d_forward(X4, rng.standard_normal((2, 5, 3, 3)), None, 2, 1)
    assert one_chunk.x is None and one_chunk.cols.shape == (5 * 9, 4 * 2 * 2)
    assert (one_chunk.stride, one_chunk.pad, one_chunk.shape, one_chunk.chunk) == (2, 1, X4.shape, 4)
    _, avg = ops.avgpool2d_forward(X4, (2, 4), (1, 0))
    assert (avg.shape, avg.window, avg.pad) == (X4.shape, (2, 4), (1, 0))
    _, sim = ops.similarity_forward(X4)  # C = 5 > 3 channels, 4x4 maps: the std path
    assert sim.std_cache._fields == ("Xc", "Z", "n", "shape")
    assert sim.std_cache.n == 16 and sim.std_cache.Z.shape == (4, 5) and sim.shape == X4.shape
    _, flat = ops.similarity_forward(X2)
    assert flat.std_cache is None


def test_chunked_conv_cache_keeps_x(monkeypatch):
    from bioplaus.ops import conv

    monkeypatch.setattr(conv, "IM2COL_MAX_BYTES", 1)
    _, cache = ops.conv2d_forward(X4, rng.standard_normal((2, 5, 3, 3)), None, 1, 1)
    assert cache.x is X4 and cache.cols is None and cache.chunk == 1
