"""The plain block: encoder -> batch norm -> φ -> dropout (-> 2x2 max-pool), the dense and conv kinds' body.

Forward, for a block with input ``x``::

    a = W*x + b           the encoder: dense (N, D_out) or conv (N, C, H, W) (the subclass's)
    z = BN(a)             batch statistics in train mode, running averages in eval mode
    h = φ(z)              ReLU, or leaky ReLU with slope 0.01     <- the block's one tap: heads read h
    o = pool(dropout(h))  what the next block receives (element dropout for dense blocks,
                          whole-channel dropout for conv blocks; max-pool where the VGG list has 'M';
                          computed as dropout(pool(h)), the same for a per-channel mask, to save memory)

``backward`` carries an error ``δh`` back to ``W, b, γ, β`` (and, only when asked, to ``x``); it is the
same for every learning rule. ``output_backward`` carries an error at ``o`` back to ``h``; only the
global rules use it. Where δh comes from is the rule's business (:mod:`bioplaus.rules`): this module
knows nothing of learning rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bioplaus import ops
from bioplaus.backend import get_array_module
from bioplaus.kinds.base import BlockForward, BlockKind, Footprint, MaskShape, Tap
from bioplaus.probes import LAST, Cost, Probe

PROBES = (
    Probe("weight_norm", "1", "Frobenius norm of the block's forward weights at the end of the epoch", LAST),
    Probe("update_norm", "1", "Frobenius norm of the change of the block's forward weights over the epoch", LAST),
)
BN_ACT_BYTES = 32  # bytes per element of h: batch norm and φ fused, forward and backward (about 8 float32 passes)


@dataclass
class EncoderCache:
    """What :meth:`EncoderBlock.backward` needs. ``bn_act`` (batch norm fused with φ) or ``act`` (φ alone,
    without batch norm); ``pool``/``drop`` None where the block has none; ``pool_first``: o was computed
    as dropout(pool(h)). A handed-over backward drops ``bn_act`` from it as soon as it is used."""

    x_shape: tuple
    enc: Any
    batch_norm: bool
    bn_act: Any = None
    act: Any = None
    pool: Any = None
    drop: Any = None
    pool_first: bool = False
    o_shape: tuple = ()


def _uniform(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape)


class EncoderBlock(BlockKind):
    """A block of one encoder (the subclass's dense or conv op), batch norm, φ, dropout and an optional
    pool; one tap, its h. Subclasses give the encoder: :meth:`encode`, :meth:`encode_backward`, its
    weight's shape, :meth:`carry`, and how the block's output and masks are shaped."""

    spatial = False  # h is a feature map
    channelwise_dropout = False

    # ------------------------------------------------------------------ the encoder (subclasses)
    def encode(self, x, p: dict, spec):
        """``x`` -> ``(a, enc_cache)``."""
        raise NotImplementedError

    def encode_backward(self, da, enc_cache, need_dx: bool, overwrite: bool):
        """``δa`` -> ``(δx or None, dW, db)``; ``overwrite``: δa is the caller's own, the op may reuse it."""
        raise NotImplementedError

    def macs(self, spec) -> int:
        """Multiply-accumulates of the encoder's forward, per sample."""
        return math.prod(self.weight_shape(spec)) * spec.size * spec.size

    def fan_in(self, spec) -> int:
        return math.prod(self.weight_shape(spec)[1:])

    # ------------------------------------------------------------------ shapes
    def taps(self, spec) -> tuple[Tap, ...]:
        return (Tap("", spec.c_in, spec.c_out, spec.size, self.spatial, spec.kernel, spec.stride, spec.pad,
                    tuple(spec.dec_window), tuple(spec.dec_pad), spec.dec_features, spec.conv_algorithm),)

    def hidden_shape(self, spec) -> tuple[int, ...]:
        """One sample of h."""
        return (spec.c_out, spec.size, spec.size) if self.spatial else (spec.c_out,)

    def output_shape(self, spec) -> tuple[int, ...]:
        if not self.spatial:
            return (spec.c_out,)
        side = spec.size // 2 if spec.pool_after else spec.size
        return (spec.c_out, side, side)

    def mask_shapes(self, spec, n: int) -> tuple[MaskShape, ...]:
        return (MaskShape((n, *self.hidden_shape(spec)), self.channelwise_dropout),)

    def num_parameters(self, spec, batch_norm: bool) -> int:
        """Encoder weights and bias, plus BN scale and shift."""
        return math.prod(self.weight_shape(spec)) + spec.c_out + (2 * spec.c_out if batch_norm else 0)

    # ------------------------------------------------------------------ arrays
    def init(self, spec, batch_norm: bool, rng) -> tuple[dict, dict]:
        """PyTorch-style initialisation of the encoder and batch norm, on the host: ``(params {W, b,
        [gamma, beta]}, running {mean, var})``. W and b uniform in ±1/√fan_in."""
        bound = 1.0 / math.sqrt(self.fan_in(spec))
        p = {"W": _uniform(rng, self.weight_shape(spec), bound), "b": _uniform(rng, (spec.c_out,), bound)}
        if batch_norm:
            p["gamma"] = np.ones(spec.c_out)
            p["beta"] = np.zeros(spec.c_out)
        return p, {"mean": np.zeros(spec.c_out), "var": np.ones(spec.c_out)}

    # ------------------------------------------------------------------ math
    def forward(self, x, p: dict, running: dict, spec, train: bool, masks, slope: float) -> BlockForward:
        """x -> (h,), (x,), o, cache, new running statistics. ``masks``: (one scaled mask,) or None."""
        mask = masks[0] if masks is not None else None
        x_in = x
        a, enc = self.encode(x, p, spec)
        cache = EncoderCache(x.shape, enc, "gamma" in p)
        new_running = running
        if cache.batch_norm:  # BN and φ fused; a is the encoder's fresh output: BN normalises it in place (memory)
            h, cache.bn_act, mean, var = ops.bn_act_forward(
                a, p["gamma"], p["beta"], running["mean"], running["var"], train, slope, overwrite=True)
            new_running = {"mean": mean, "var": var}
        else:
            h, cache.act = ops.act_forward(a, slope, overwrite=True)  # a is the encoder's fresh output
        del a  # free the pre-activation before dropout/pool allocate (peak memory)
        o = h
        # NOTE (memory): a whole-channel mask is a constant >= 0 per (sample, channel), so
        # pool(dropout(h)) = dropout(pool(h)); pooling first never makes a dropped copy of the full h
        pool_first = spec.pool_after and mask is not None and mask.ndim == 4 and mask.shape[2:] == (1, 1)
        if pool_first:
            o, cache.pool = ops.maxpool2d_forward(o, 2)
        if mask is not None:  # after a pool, o is the pool's fresh output: dropped in place (memory)
            o, cache.drop = ops.dropout_forward(o, mask, overwrite=pool_first)
        if spec.pool_after and not pool_first:
            o, cache.pool = ops.maxpool2d_forward(o, 2)
        cache.pool_first = pool_first
        cache.o_shape = o.shape
        return BlockForward((h,), (x_in,), o, cache, new_running)

    def output_backward(self, do, cache: EncoderCache):
        """Error at the block's output o -> error at h (through pool and dropout). Global errors only."""
        do = do.reshape(cache.o_shape)  # the layer above may have flattened o
        if cache.pool_first:  # o = dropout(pool(h))
            do = ops.dropout_backward(do, cache.drop)
            return ops.maxpool2d_backward(do, cache.pool)
        if cache.pool is not None:
            do = ops.maxpool2d_backward(do, cache.pool)
        if cache.drop is not None:
            do = ops.dropout_backward(do, cache.drop)
        return do

    def backward(self, dhs, cache: EncoderCache, spec, need_dx: bool, overwrite_dh: bool = False, carry=None):
        """(δh,) -> (δx or None, grads {W, b, gamma, beta}); see :meth:`BlockKind.backward`. With
        ``overwrite_dh`` BN's normalised copy is dropped from the cache before the encoder's backward
        (peak memory)."""
        (dh,) = dhs
        del dhs
        grads = {}
        if cache.batch_norm:
            bn_cache = cache.bn_act
            if overwrite_dh:
                cache.bn_act = None
            da, grads["gamma"], grads["beta"] = ops.bn_act_backward(dh, bn_cache, overwrite_dh=overwrite_dh)
            del bn_cache  # with overwrite_dh, xhat is freed before the encoder's backward (peak memory)
        else:
            da = ops.act_backward(dh, cache.act, overwrite_dh=overwrite_dh)
        del dh
        if carry is not None:
            _, grads["W"], grads["b"] = self.encode_backward(da, cache.enc, need_dx=False, overwrite=False)
            dx = carry(da, cache.enc) if need_dx else None
        else:
            # da is ours (a fresh array, or the handed-over δh): the encoder may write δx into it
            dx, grads["W"], grads["b"] = self.encode_backward(da, cache.enc, need_dx=need_dx, overwrite=True)
        if dx is not None:
            dx = dx.reshape(cache.x_shape)
        return dx, grads

    # ------------------------------------------------------------------ declared
    def probes(self, spec) -> tuple[Probe, ...]:
        return PROBES

    def snapshot(self, p: dict):
        return p["W"].copy()

    def probe_values(self, p: dict, snapshot) -> dict:
        xp = get_array_module(p["W"])
        return {"weight_norm": xp.linalg.norm(p["W"].ravel()),
                "update_norm": xp.linalg.norm((p["W"] - snapshot).ravel())}

    def cost(self, spec, batch: int, need_dx: bool) -> Cost:
        """The encoder's forward, its weight gradient (and the error to x), batch norm and φ's passes."""
        macs = batch * self.macs(spec)
        return Cost(macs, macs * (2 if need_dx else 1), BN_ACT_BYTES * batch * math.prod(self.hidden_shape(spec)))

    def footprint(self, spec) -> Footprint:
        return Footprint(math.prod(self.hidden_shape(spec)))

    def describe(self, spec, batch_norm: bool, nonlin: str, dropout: float) -> str:
        bn = "BatchNorm -> " if batch_norm else ""
        drop = f" -> {'Channel' if self.channelwise_dropout else ''}Dropout({dropout:g})" if dropout > 0 else ""
        pool = " -> MaxPool2x2" if spec.pool_after else ""
        return f"{self.describe_encoder(spec)} -> {bn}{nonlin}{drop}{pool}"

    def describe_encoder(self, spec) -> str:
        raise NotImplementedError
