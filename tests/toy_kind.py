"""A block kind defined outside the package, as a researcher would (the README's "Adding a block kind").

``toy-skip-dense``: a dense block with an identity shortcut and no batch norm (its input and output have
the same width)::

    a = W x + b,   h = φ(a) + x,   o = dropout(h)

One tap, h; the shortcut is inside the block, so under a local rule no error leaves it, and a pipeline
splits between such blocks. Its own statistic: the gain of its branch against the shortcut, |W|_F / √c.
The kind is this module and one line, ``kinds.register(SkipDense())``; the model that uses it (a dense
block to the hidden width, then skip blocks) is one more, ``models.register_model(...)``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from bioplaus import kinds, models, ops
from bioplaus.backend import get_array_module
from bioplaus.probes import LAST, Cost, Probe


class SkipCache(NamedTuple):
    """What the backward needs: x's shape, the dense op's and φ's caches, the dropout mask (or None)."""

    x_shape: tuple
    enc: Any
    act: Any
    drop: Any


class SkipDense(kinds.BlockKind):
    """h = φ(W x + b) + x, o = dropout(h); W (c, c) uniform ±1/√c as PyTorch's Linear."""

    name = "toy-skip-dense"

    def taps(self, spec):
        return (kinds.Tap("", spec.c_in, spec.c_out, dec_features=spec.dec_features),)

    def output_shape(self, spec):
        return (spec.c_out,)

    def weight_shape(self, spec):
        return (spec.c_out, spec.c_in)

    def mask_shapes(self, spec, n):
        return (kinds.MaskShape((n, spec.c_out)),)

    def num_parameters(self, spec, batch_norm):
        return spec.c_out * spec.c_in + spec.c_out

    def describe(self, spec, batch_norm, nonlin, dropout):
        return f"Dense {spec.c_in}->{spec.c_out} -> {nonlin} (+ identity) -> Dropout({dropout:g})"

    def init(self, spec, batch_norm, rng):
        bound = 1.0 / math.sqrt(spec.c_in)
        return {"W": rng.uniform(-bound, bound, (spec.c_out, spec.c_in)),
                "b": rng.uniform(-bound, bound, spec.c_out)}, {}

    def forward(self, x, p, running, spec, train, masks, slope):
        x_shape = x.shape
        x = x.reshape(x.shape[0], -1)  # (N, c)
        a, enc = ops.dense_forward(x, p["W"], p["b"])
        h, act = ops.act_forward(a, slope)
        h = h + x  # the shortcut
        o, drop = ops.dropout_forward(h, masks[0] if masks else None)
        return kinds.BlockForward((h,), (x,), o, SkipCache(x_shape, enc, act, drop), running)

    def backward(self, dhs, cache, spec, need_dx, overwrite_dh=False, carry=None):
        (dh,) = dhs
        da = ops.act_backward(dh, cache.act)
        if carry is not None:
            _, dW, db = ops.dense_backward(da, cache.enc, need_dx=False)
            dx = carry(da, cache.enc) if need_dx else None
        else:
            dx, dW, db = ops.dense_backward(da, cache.enc, need_dx=need_dx)
        if dx is not None:
            dx = (dx + dh).reshape(cache.x_shape)  # the shortcut's error
        return dx, {"W": dW, "b": db}

    def output_backward(self, do, cache):
        return ops.dropout_backward(do.reshape(do.shape[0], -1), cache.drop)

    def carry(self, spec, M):
        return lambda da, enc_cache: da @ M  # NOT A GRADIENT: M stands in for W

    def probes(self, spec):
        return (Probe("skip_gain", "1", "the branch's gain against the shortcut, |W|_F / sqrt(width)", LAST),)

    def probe_values(self, p, snapshot):
        xp = get_array_module(p["W"])
        return {"skip_gain": xp.linalg.norm(p["W"].ravel()) / math.sqrt(p["W"].shape[0])}

    def cost(self, spec, batch, need_dx):
        macs = batch * spec.c_in * spec.c_out
        return Cost(macs, macs * (2 if need_dx else 1), 16 * batch * spec.c_out)


SKIP = kinds.register(SkipDense())


def skip_mlp(cfg, input_shape):
    """``num_layers`` blocks: a dense block to ``num_hidden`` units, then skip blocks of that width."""
    width, dec = cfg.num_hidden, models.decoder_fields(cfg.num_hidden, 1, cfg.dim_in_decoder)
    first = models.BlockSpec("fc1", "dense", int(np.prod(input_shape)), width, **dec)
    return [first, *(models.BlockSpec(f"skip{i}", SKIP, width, width, **dec) for i in range(2, cfg.dense_layers + 1))]


models.register_model("toy-skip-mlp", skip_mlp)
