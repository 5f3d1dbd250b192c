"""A block and its arrays: encoder -> batch norm -> φ -> dropout (-> 2x2 max-pool).

Forward, for a block with input ``x``::

    a = W*x + b           dense (N, D_out) or conv (N, C, H, W)
    z = BN(a)             batch statistics in train mode, running averages in eval mode
    h = φ(z)              ReLU, or leaky ReLU with slope 0.01     <- local heads read h
    o = pool(dropout(h))  what the next block receives (element dropout for dense blocks,
                          whole-channel dropout for conv blocks; max-pool where the VGG list has 'M';
                          computed as dropout(pool(h)), the same for a per-channel mask, to save memory)

``block_backward`` carries an error ``δh`` back to ``W, b, γ, β`` (and, only when asked, to
``x``); it is the same for every learning rule. ``output_backward`` carries an error at ``o``
back to ``h``; only global backprop uses it. Where ``δh`` comes from is the rule's business
(:mod:`bioplaus.rules`).

Arrays live in :class:`Blocks` (a contiguous run of blocks, the whole network or a pipeline
stage's share). This module knows nothing of learning rules: which heads a block carries and
where δh comes from is :mod:`bioplaus.rules`'s business (it imports this module, never the reverse).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bioplaus import ops
from bioplaus.models import BlockSpec

LEAKY_SLOPE = 0.01


INIT_STREAM = 0x1417  # initial weights of block i come from the stream (seed, INIT_STREAM, i)
OUTPUT_STREAM_INDEX = 10_000  # ... and the output layer's from (seed, INIT_STREAM, OUTPUT_STREAM_INDEX)


def init_stream(seed: int, index: int) -> np.random.Generator:
    """The host random stream that block ``index``'s initial arrays (and its heads') are drawn from."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, INIT_STREAM, index])))


@dataclass
class Blocks:
    """A contiguous run of a network's blocks and their arrays, and the output layer when the run
    ends the network. The whole network is one ``Blocks``; a stage of a pipeline holds a slice.

    ``params`` per block: W, b, [gamma, beta] and the block's head weights (trained with the block's
    optimizer, as in the authors' code); ``fixed`` per block: B, P (fixed random matrices, never
    trained, never seen by the optimizer); ``running``: batch-norm running statistics;
    ``feedback`` per block and ``out_feedback``: the matrices that carry errors in place of the
    forward weights (feedback alignment's fixed B, Kolen-Pollack's B that follows W, the direct
    projections of DFA and DRTP), never seen by the optimizer either.
    """

    specs: tuple[BlockSpec, ...]
    first: int  # index of specs[0] in the network
    params: list[dict]
    fixed: list[dict]
    running: list[dict]
    out: dict | None  # output layer: W (K, D), b (K,); None unless this run ends the network
    slope: float  # φ's negative slope: 0.0 (ReLU) or 0.01 (leaky ReLU)
    num_classes: int
    feedback: list[dict] = field(default_factory=list)  # per block (empty dicts when the rule has none)
    out_feedback: dict = field(default_factory=dict)

    @property
    def dtype(self):
        return self.params[0]["W"].dtype if self.params else self.out["W"].dtype

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.specs]


def _uniform(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape)


def init_block(spec: BlockSpec, batch_norm: bool, rng: np.random.Generator) -> tuple[dict, dict]:
    """PyTorch-style initialisation of a block's encoder and batch norm, on the host:
    ``(params {W, b, [gamma, beta]}, running {mean, var})``. W and b uniform in ±1/√fan_in."""
    if spec.kind == "conv":
        fan_in = spec.c_in * spec.kernel * spec.kernel
        w_shape = (spec.c_out, spec.c_in, spec.kernel, spec.kernel)
    else:
        fan_in = spec.c_in
        w_shape = (spec.c_out, spec.c_in)
    bound = 1.0 / math.sqrt(fan_in)
    p = {"W": _uniform(rng, w_shape, bound), "b": _uniform(rng, (spec.c_out,), bound)}
    if batch_norm:
        p["gamma"] = np.ones(spec.c_out)
        p["beta"] = np.zeros(spec.c_out)
    return p, {"mean": np.zeros(spec.c_out), "var": np.ones(spec.c_out)}


def init_output(num_features: int, num_classes: int, seed: int, zero_weights: bool) -> dict:
    """The output layer on the host: W, b uniform in ±1/√D; W zeroed when ``zero_weights``."""
    rng = init_stream(seed, OUTPUT_STREAM_INDEX)
    bound = 1.0 / math.sqrt(num_features)
    W = _uniform(rng, (num_classes, num_features), bound)
    if zero_weights:
        W[:] = 0.0
    return {"W": W, "b": _uniform(rng, (num_classes,), bound)}


# ---------------------------------------------------------------------------------- block math
def block_forward(x, p: dict, running: dict, spec: BlockSpec, train: bool, mask, slope: float):
    """x -> (h, o, cache, new_running). ``mask``: a scaled dropout mask or None."""
    cache = {"x_shape": x.shape}
    if spec.kind == "dense":
        x = x.reshape(x.shape[0], -1)  # (N, D_in)
        a, cache["enc"] = ops.dense_forward(x, p["W"], p["b"])  # (N, D_out)
    else:
        a, cache["enc"] = ops.conv2d_forward(x, p["W"], p["b"], spec.stride, spec.pad,
                                             spec.conv_algorithm)  # (N, C, H, W)
    new_running = running
    if "gamma" in p:  # BN and φ fused; a is the encoder's fresh output: BN normalises it in place (memory)
        h, cache["bn_act"], mean, var = ops.bn_act_forward(
            a, p["gamma"], p["beta"], running["mean"], running["var"], train, slope, overwrite=True)
        new_running = {"mean": mean, "var": var}
    else:
        h, cache["act"] = ops.act_forward(a, slope, overwrite=True)  # a is the encoder's fresh output
    del a  # free the pre-activation before dropout/pool allocate (peak memory)
    o = h
    # NOTE (memory): a whole-channel mask is a constant >= 0 per (sample, channel), so
    # pool(dropout(h)) = dropout(pool(h)); pooling first never makes a dropped copy of the full h
    pool_first = spec.pool_after and mask is not None and mask.ndim == 4 and mask.shape[2:] == (1, 1)
    if pool_first:
        o, cache["pool"] = ops.maxpool2d_forward(o, 2)
    if mask is not None:  # after a pool, o is the pool's fresh output: dropped in place (memory)
        o, cache["drop"] = ops.dropout_forward(o, mask, overwrite=pool_first)
    if spec.pool_after and not pool_first:
        o, cache["pool"] = ops.maxpool2d_forward(o, 2)
    cache["pool_first"] = pool_first
    cache["o_shape"] = o.shape
    return h, o, cache, new_running


def output_backward(do, cache):
    """Error at the block's output o -> error at h (through pool and dropout). Global backprop only."""
    do = do.reshape(cache["o_shape"])  # the layer above may have flattened o
    if cache["pool_first"]:  # o = dropout(pool(h))
        do = ops.dropout_backward(do, cache["drop"])
        return ops.maxpool2d_backward(do, cache["pool"])
    if "pool" in cache:
        do = ops.maxpool2d_backward(do, cache["pool"])
    if "drop" in cache:
        do = ops.dropout_backward(do, cache["drop"])
    return do


def block_backward(dh, cache, spec: BlockSpec, need_dx: bool, overwrite_dh: bool = False,
                   carry: Callable | None = None):
    """δh -> (δx or None, grads {W, b, gamma, beta}). The same for every rule.

    ``overwrite_dh=True``: the caller hands over δh (needed by nothing else), so φ's backward may
    reuse its buffer; the caller's ``cache`` is then used up too: BN's normalised copy is dropped
    from it before the encoder's backward (peak memory).
    ``carry(δa, enc_cache) -> δx``: how the error at the encoder's output reaches x when a rule sends
    it through another matrix than W (feedback alignment and its kin); by default the gradient, Wᵀ.
    """
    grads = {}
    if "bn_act" in cache:
        bn_cache = cache.pop("bn_act") if overwrite_dh else cache["bn_act"]
        da, grads["gamma"], grads["beta"] = ops.bn_act_backward(dh, bn_cache, overwrite_dh=overwrite_dh)
        del bn_cache  # with overwrite_dh, xhat is freed before the encoder's backward (peak memory)
    else:
        da = ops.act_backward(dh, cache["act"], overwrite_dh=overwrite_dh)
    del dh
    if carry is not None:
        if spec.kind == "dense":
            _, grads["W"], grads["b"] = ops.dense_backward(da, cache["enc"], need_dx=False)
        else:
            _, grads["W"], grads["b"] = ops.conv2d_backward(da, cache["enc"], need_dx=False)
        dx = carry(da, cache["enc"]) if need_dx else None
    elif spec.kind == "dense":
        dx, grads["W"], grads["b"] = ops.dense_backward(da, cache["enc"], need_dx=need_dx)
    else:
        # da is ours (a fresh array, or the handed-over δh): a same-size conv may write δx into it
        dx, grads["W"], grads["b"] = ops.conv2d_backward(da, cache["enc"], need_dx=need_dx, overwrite_dout=True)
    if dx is not None:
        dx = dx.reshape(cache["x_shape"])
    return dx, grads


def output_layer_forward(x, out: dict):
    """The network's prediction from the last block's output (flattened)."""
    x = x.reshape(x.shape[0], -1)  # (N, D)
    return ops.dense_forward(x, out["W"], out["b"])  # (N, K)
