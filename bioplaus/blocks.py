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

Arrays live in a :class:`Network`: trainable ``params`` per block (forward weights and the
block's local-head weights, which share the block's optimizer as in the authors' code),
``fixed`` matrices per block (feedback ``B``, label projection ``P``: never trained, never
seen by the optimizer), batch-norm ``running`` statistics, and the output layer ``out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bioplaus import ops
from bioplaus.backend import Backend
from bioplaus.config import Config
from bioplaus.models import BlockSpec, NetSpec

LEAKY_SLOPE = 0.01


@dataclass
class Network:
    spec: NetSpec
    params: list[dict]  # per block: W, b, [gamma, beta], [dec_W, dec_b], [sim_W]
    fixed: list[dict]  # per block: [B], [P]   (fixed random matrices, not parameters)
    running: list[dict]  # per block: mean, var (batch-norm running statistics)
    out: dict  # output layer: W (K, D), b (K,)
    slope: float  # φ's negative slope: 0.0 (ReLU) or 0.01 (leaky ReLU)

    @property
    def dtype(self):
        return self.out["W"].dtype


def _uniform(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape)


def init_network(spec: NetSpec, cfg: Config, backend: Backend, dtype=np.float32) -> Network:
    """PyTorch-style initialisation, drawn on the host from keyed streams, then moved to the device.

    Drawing on the host makes a CPU and a GPU run of the same seed start from identical arrays.
    """
    from bioplaus.rules import RULES  # the rule decides which heads a block carries

    rule = RULES[cfg.variant]
    K = spec.num_classes
    params, fixed, running = [], [], []
    for i, b in enumerate(spec.blocks):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, 0x1417, i])))
        if b.kind == "conv":
            fan_in = b.c_in * b.kernel * b.kernel
            w_shape = (b.c_out, b.c_in, b.kernel, b.kernel)
        else:
            fan_in = b.c_in
            w_shape = (b.c_out, b.c_in)
        bound = 1.0 / math.sqrt(fan_in)
        p = {"W": _uniform(rng, w_shape, bound), "b": _uniform(rng, (b.c_out,), bound)}
        if spec.batch_norm:
            p["gamma"] = np.ones(b.c_out)
            p["beta"] = np.zeros(b.c_out)
        f = {}
        D = b.dec_features
        if rule.pred == "exact":  # decoder to class scores, weights start at zero
            p["dec_W"] = np.zeros((K, D))
            p["dec_b"] = _uniform(rng, (K,), 1.0 / math.sqrt(D))
        elif rule.pred == "feedback":  # decoder to the label code; feedback matrix B of its shape
            T = cfg.target_proj_size
            p["dec_W"] = np.zeros((T, D))
            p["dec_b"] = np.zeros(T)
            f["B"] = _uniform(rng, (T, D), 1.0 / math.sqrt(D))
        if rule.sim == "learned":  # 3x3 conv (conv blocks) or dense (dense blocks), no bias
            if b.kind == "conv":
                p["sim_W"] = _uniform(rng, (b.c_out, b.c_out, 3, 3), 1.0 / math.sqrt(9 * b.c_out))
            else:
                p["sim_W"] = _uniform(rng, (b.c_out, b.c_out), 1.0 / math.sqrt(b.c_out))
        if rule.pred == "feedback" or rule.sim == "direct":  # fixed random label projection
            f["P"] = _uniform(rng, (K, cfg.target_proj_size), 1.0 / math.sqrt(K))
        params.append({k: backend.asarray(v, dtype=dtype) for k, v in p.items()})
        fixed.append({k: backend.asarray(v, dtype=dtype) for k, v in f.items()})
        running.append({"mean": backend.asarray(np.zeros(b.c_out), dtype=dtype),
                        "var": backend.asarray(np.ones(b.c_out), dtype=dtype)})
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, 0x1417, 10_000])))
    D = spec.out_features_in
    bound = 1.0 / math.sqrt(D)
    W_out = _uniform(rng, (K, D), bound)
    if cfg.variant != "glob":  # the authors zero the output layer whenever local losses are on
        W_out[:] = 0.0
    out = {"W": backend.asarray(W_out, dtype=dtype),
           "b": backend.asarray(_uniform(rng, (K,), bound), dtype=dtype)}
    slope = LEAKY_SLOPE if cfg.nonlin == "leakyrelu" else 0.0
    return Network(spec, params, fixed, running, out, slope)


# ---------------------------------------------------------------------------------- block math
def block_forward(x, p: dict, running: dict, spec: BlockSpec, train: bool, mask, slope: float):
    """x -> (h, o, cache, new_running). ``mask``: a scaled dropout mask or None."""
    cache = {"x_shape": x.shape}
    if spec.kind == "dense":
        x = x.reshape(x.shape[0], -1)  # (N, D_in)
        a, cache["enc"] = ops.dense_forward(x, p["W"], p["b"])  # (N, D_out)
    else:
        a, cache["enc"] = ops.conv2d_forward(x, p["W"], p["b"], spec.stride, spec.pad)  # (N, C, H, W)
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


def block_backward(dh, cache, spec: BlockSpec, need_dx: bool, overwrite_dh: bool = False):
    """δh -> (δx or None, grads {W, b, gamma, beta}). The same for every rule.

    ``overwrite_dh=True``: the caller hands over δh (needed by nothing else), so φ's backward may
    reuse its buffer; the caller's ``cache`` is then used up too: BN's normalised copy is dropped
    from it before the encoder's backward (peak memory).
    """
    grads = {}
    if "bn_act" in cache:
        bn_cache = cache.pop("bn_act") if overwrite_dh else cache["bn_act"]
        da, grads["gamma"], grads["beta"] = ops.bn_act_backward(dh, bn_cache, overwrite_dh=overwrite_dh)
        del bn_cache  # with overwrite_dh, xhat is freed before the encoder's backward (peak memory)
    else:
        da = ops.act_backward(dh, cache["act"], overwrite_dh=overwrite_dh)
    del dh
    if spec.kind == "dense":
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
