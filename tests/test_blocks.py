"""The dense and conv block kinds: the forward's shapes, the backward against float64 central differences
(with and without batch norm), the whole block with dropout and pool, the initialisation's bounds and
streams, and that the block modules know nothing of learning rules.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import block_forward, numerical_grad, rel_error

from bioplaus import ops
from bioplaus.blocks import INIT_STREAM, LEAKY_SLOPE, OUTPUT_STREAM_INDEX, init_output, init_stream
from bioplaus.models import BlockSpec

DENSE = BlockSpec("fc1", "dense", 12, 7, dec_features=7)
CONV = BlockSpec("conv1", "conv", 3, 4, 3, 1, 1, 6)  # 3 -> 4 channels, 3x3 pad 1, 6x6 maps
CONV_POOL = BlockSpec("conv1", "conv", 3, 4, 3, 1, 1, 6, pool_after=True)
STRIDED = BlockSpec("conv1", "conv", 2, 3, 7, 2, 3, 4)  # the STL-10 stem: 7x7 stride 2 pad 3, 8x8 -> 4x4


def block_backward(dh, cache, spec: BlockSpec, need_dx: bool, overwrite_dh: bool = False):
    return spec.kind.backward((dh,), cache, spec, need_dx, overwrite_dh)


def init_block(spec: BlockSpec, batch_norm: bool, rng):
    return spec.kind.init(spec, batch_norm, rng)


def make_block(spec: BlockSpec, batch_norm: bool, seed: int = 0):
    """Float64 arrays of a block, with γ, β and the running statistics away from their initial values."""
    rng = np.random.default_rng(seed)
    p, running = init_block(spec, batch_norm, rng)
    if batch_norm:
        p["gamma"] = 1.0 + 0.3 * rng.standard_normal(spec.c_out)
        p["beta"] = 0.3 * rng.standard_normal(spec.c_out)
        running = {"mean": 0.1 * rng.standard_normal(spec.c_out), "var": 0.5 + rng.random(spec.c_out)}
    return p, running


def input_for(spec: BlockSpec, n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    if spec.kind.name == "dense":
        return rng.standard_normal((n, 3, 2, 2))  # a map: the dense block flattens it (12 features)
    side = (spec.size - 1) * spec.stride + spec.kernel - 2 * spec.pad
    return rng.standard_normal((n, spec.c_in, side, side))


def assert_grad(ours, numeric, what):
    err = rel_error(ours, numeric)
    assert err < 1e-6, (what, err)


# ------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("spec", [DENSE, CONV, CONV_POOL, STRIDED], ids=["dense", "conv", "conv-pool", "strided"])
def test_forward_and_backward_shapes(spec, batch_norm):
    p, running = make_block(spec, batch_norm)
    x = input_for(spec, 5)
    h, o, cache, new_running = block_forward(x, p, running, spec, True, None, 0.0)
    side = spec.size
    h_shape = (5, spec.c_out) if spec.kind.name == "dense" else (5, spec.c_out, side, side)
    assert h.shape == h_shape
    assert o.shape == ((5, spec.c_out, side // 2, side // 2) if spec.pool_after else h_shape)
    assert (o is h) == (not spec.pool_after)  # no dropout, no pool: the block's output is h itself
    assert np.all(h >= 0)  # ReLU
    if batch_norm:
        assert set(new_running) == {"mean", "var"} and new_running["mean"].shape == (spec.c_out,)
        assert not np.array_equal(new_running["mean"], running["mean"])  # train mode moves the statistics
    else:
        assert new_running is running
    dh = np.random.default_rng(2).standard_normal(h.shape)
    dx, grads = block_backward(dh, cache, spec, need_dx=True)
    assert dx.shape == x.shape  # the dense block's δx has the map's shape it was given
    assert set(grads) == ({"W", "b", "gamma", "beta"} if batch_norm else {"W", "b"})
    for k, g in grads.items():
        assert g.shape == p[k].shape and g.dtype == np.float64, k
    _, _, cache, _ = block_forward(x, p, running, spec, True, None, 0.0)
    dx_none, grads2 = block_backward(dh.copy(), cache, spec, need_dx=False, overwrite_dh=True)
    assert dx_none is None
    for k in grads:  # handing δh over changes no gradient
        assert np.array_equal(grads[k], grads2[k]), k


def test_eval_mode_uses_and_keeps_the_running_statistics():
    p, running = make_block(CONV, True)
    x = input_for(CONV, 4)
    h, _, _, new_running = block_forward(x, p, running, CONV, False, None, LEAKY_SLOPE)
    assert new_running["mean"] is running["mean"] and new_running["var"] is running["var"]
    shape = (1, -1, 1, 1)
    a = ops.conv2d_forward(x, p["W"], p["b"], 1, 1)[0]
    z = (a - running["mean"].reshape(shape)) / np.sqrt(running["var"].reshape(shape) + 1e-5)
    z = z * p["gamma"].reshape(shape) + p["beta"].reshape(shape)
    assert rel_error(h, np.where(z > 0, z, LEAKY_SLOPE * z)) < 1e-12
    h1, _, _, _ = block_forward(x[:1], p, running, CONV, False, None, LEAKY_SLOPE)
    assert rel_error(h1, h[:1]) < 1e-12  # no batch statistics: a sample's output is its own


# --------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("spec", [DENSE, CONV, STRIDED], ids=["dense", "conv", "strided"])
def test_block_backward_is_the_gradient(spec, batch_norm):
    """``block_backward(R)`` is the gradient of ``sum(h * R)`` for W, b, γ, β and the input x."""
    p, running = make_block(spec, batch_norm, seed=3)
    x = input_for(spec, 4, seed=4)
    slope = LEAKY_SLOPE
    R = np.random.default_rng(5).standard_normal(block_forward(x, p, running, spec, True, None, slope)[0].shape)

    def objective():
        return np.sum(block_forward(x, p, running, spec, True, None, slope)[0] * R)

    _, _, cache, _ = block_forward(x, p, running, spec, True, None, slope)
    dx, grads = block_backward(R.copy(), cache, spec, need_dx=True, overwrite_dh=True)
    assert_grad(dx, numerical_grad(objective, x), "x")
    for k in grads:
        numeric = numerical_grad(objective, p[k])
        if batch_norm and k == "b":  # a bias before train-mode batch norm has no effect at all
            assert np.max(np.abs(grads[k])) < 1e-12 and np.max(np.abs(numeric)) < 1e-7
        else:
            assert_grad(grads[k], numeric, k)


@pytest.mark.parametrize("spec", [CONV_POOL, DENSE], ids=["conv-pool", "dense"])
def test_whole_block_with_dropout_and_pool(spec):
    """The kind's ``output_backward`` then its ``backward`` is the gradient of ``sum(o * R)``, o = pool(dropout(h)):
    a whole-channel mask with a pool (taken as dropout(pool(h))), an element mask without."""
    p, running = make_block(spec, True, seed=6)
    x = input_for(spec, 4, seed=7)
    h = block_forward(x, p, running, spec, True, None, 0.0)[0]
    mask = ops.dropout_mask(np.random.default_rng(8), h.shape, 0.3, np.float64, channelwise=spec.kind.name == "conv")
    assert 0 < np.count_nonzero(mask) < mask.size  # something is dropped and something kept
    _, o, cache, _ = block_forward(x, p, running, spec, True, mask, 0.0)
    R = np.random.default_rng(9).standard_normal(o.shape)

    def objective():
        return np.sum(block_forward(x, p, running, spec, True, mask, 0.0)[1] * R)

    dh = spec.kind.output_backward(R.reshape(len(R), -1), cache)  # the layer above hands a flattened error
    assert dh.shape == h.shape
    assert np.all(dh[np.broadcast_to(mask == 0, dh.shape)] == 0)  # dropped units (or channels) get no error
    dx, grads = block_backward(dh, cache, spec, need_dx=True, overwrite_dh=True)
    assert_grad(dx, numerical_grad(objective, x), "x")
    for k in ("W", "gamma", "beta"):
        assert_grad(grads[k], numerical_grad(objective, p[k]), k)


# ------------------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("spec", [DENSE, CONV, STRIDED], ids=["dense", "conv", "strided"])
def test_init_block_bounds(spec):
    p, running = init_block(spec, True, init_stream(1, 0))
    fan_in = spec.c_in * (spec.kernel**2 if spec.kind.name == "conv" else 1)
    bound = 1.0 / math.sqrt(fan_in)
    w_shape = (spec.c_out, spec.c_in, spec.kernel, spec.kernel) if spec.kind.name == "conv" else (spec.c_out, spec.c_in)
    assert p["W"].shape == w_shape and p["b"].shape == (spec.c_out,)
    for k in ("W", "b"):
        assert p[k].dtype == np.float64
        assert np.max(np.abs(p[k])) <= bound, k
    assert np.max(np.abs(p["W"])) > 0.7 * bound  # uniform over the whole interval, not a narrower one
    assert p["W"].min() < 0 < p["W"].max()
    assert np.array_equal(p["gamma"], np.ones(spec.c_out)) and np.array_equal(p["beta"], np.zeros(spec.c_out))
    assert np.array_equal(running["mean"], np.zeros(spec.c_out)) and np.array_equal(running["var"], np.ones(spec.c_out))
    no_bn, _ = init_block(spec, False, init_stream(1, 0))
    assert set(no_bn) == {"W", "b"} and np.array_equal(no_bn["W"], p["W"])


def test_init_streams_are_keyed():
    a = init_block(CONV, True, init_stream(3, 2))[0]["W"]
    assert np.array_equal(a, init_block(CONV, True, init_stream(3, 2))[0]["W"])  # same key, same arrays
    for other in (init_stream(3, 1), init_stream(4, 2)):
        assert not np.array_equal(a, init_block(CONV, True, other)[0]["W"])
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence([3, INIT_STREAM, 2])))
    assert init_stream(3, 2).random() == ref.random()


@pytest.mark.parametrize("zero", [True, False])
def test_init_output(zero):
    out = init_output(50, 10, seed=2, zero_weights=zero)
    bound = 1 / math.sqrt(50)
    assert out["W"].shape == (10, 50) and out["b"].shape == (10,)
    assert np.max(np.abs(out["b"])) <= bound and np.any(out["b"] != 0)
    assert np.all(out["W"] == 0) if zero else (0.7 * bound < np.max(np.abs(out["W"])) <= bound)
    again = init_output(50, 10, seed=2, zero_weights=False)
    assert np.array_equal(again["b"], out["b"])  # zeroing W draws the same numbers
    rng = init_stream(2, OUTPUT_STREAM_INDEX)
    assert np.array_equal(again["W"], rng.uniform(-bound, bound, size=(10, 50)))


# ------------------------------------------------------------------------------------ layering
def test_importing_blocks_imports_no_rule_module():
    code = "import sys, bioplaus.blocks; print(' '.join(sorted(m for m in sys.modules if m.startswith('bioplaus'))))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert "bioplaus.blocks" in loaded and "bioplaus.kinds.conv" in loaded
    below = {"bioplaus", "bioplaus.backend", "bioplaus.errors", "bioplaus.models", "bioplaus.blocks", "bioplaus.probes"}
    above = sorted(m for m in loaded if m not in below and not m.startswith(("bioplaus.ops", "bioplaus.kinds")))
    assert above == [], f"importing bioplaus.blocks loaded {above}"


# ------------------------------------------------------------------------------ what a kind declares
@pytest.mark.parametrize("spec", [DENSE, CONV, CONV_POOL, STRIDED], ids=["dense", "conv", "conv-pool", "strided"])
def test_a_kind_declares_what_its_math_does(spec):
    """Shapes, masks, parameter count, footprint, cost and probes, as the kind declares them, against what
    its init and forward actually make."""
    from bioplaus.kinds import draw_masks

    kind = spec.kind
    p, running = make_block(spec, True)
    n = 5
    masks = draw_masks(spec, np.random.default_rng(3), 0.3, n, np.float64)
    assert len(masks) == len(kind.mask_shapes(spec, n)) == 1 and draw_masks(spec, None, 0.0, n, np.float64) is None
    x = input_for(spec, n)
    hs, inputs, o, _, _ = kind.forward(x, p, running, spec, True, masks, 0.0)
    assert len(inputs) == 1 and inputs[0] is x  # one tap, whose layer reads the block's input
    assert o.shape[1:] == kind.output_shape(spec) and math.prod(o.shape[1:]) == spec.out_features
    assert p["W"].shape == kind.weight_shape(spec)
    assert kind.num_parameters(spec, True) == sum(v.size for v in p.values())
    assert kind.num_parameters(spec, False) == sum(v.size for k, v in p.items() if k in ("W", "b"))
    (tap,) = kind.taps(spec)
    assert (tap.prefix, tap.layer(spec.name), tap.c_out, tap.spatial) == ("", spec.name, spec.c_out, hs[0].ndim == 4)
    assert kind.footprint(spec).hidden == math.prod(hs[0].shape[1:])
    cost, with_dx = kind.cost(spec, n, need_dx=False), kind.cost(spec, n, need_dx=True)
    assert cost.forward == n * p["W"].size * spec.size**2 == cost.backward  # forward; the weight gradient
    assert with_dx.backward == 2 * cost.backward and cost.bytes > 0
    assert [probe.name for probe in kind.probes(spec)] == ["weight_norm", "update_norm"]
    start = kind.snapshot(p)
    p["W"] += 0.5
    values = kind.probe_values(p, start)
    assert float(values["update_norm"]) == pytest.approx(0.5 * math.sqrt(p["W"].size))
    assert float(values["weight_norm"]) == pytest.approx(np.linalg.norm(p["W"]))
