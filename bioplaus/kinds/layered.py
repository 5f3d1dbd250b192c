"""The residual machinery: a block of several convolutional layers, each with its own local heads, and an
optional shortcut around them, as Nøkland & Eidnes' ``LocalLossBlockConv`` layers inside their ``BasicBlock``,
``Bottleneck`` and ``wide_basic`` (the kinds themselves live in :mod:`~bioplaus.kinds.basic`,
:mod:`~bioplaus.kinds.bottleneck` and :mod:`~bioplaus.kinds.wide`; each is a list of :class:`Layer` s).

A layer with input ``u`` (the block's input x for the first one, the previous layer's output after that)::

    post-act (ResNet)   a = W*u (+ b);  z = BN(a) (+ s on the last layer);  h = φ(z)   <- its tap: heads read h
                        out = channel-dropout(h)
    pre-act (WRN)       v = dropout(φ(BN_pre(u)));  a = W*v + b (+ s on the last layer);  out = a
                        the tap: heads read h = φ(BN_head(a)), a batch norm of their own (the authors create
                        it only under local rules; here it is always there and learns only from the heads)

``s`` is the shortcut of the block's input x: x itself, or a 1x1 convolution (stride as the block's) with a
batch norm (ResNet, no bias) or with a bias (WRN). The block's output o is the last layer's out, through the
network's tail where the block ends the network (:data:`TAILS`: global average pooling, or the WRN's final
batch norm (momentum 0.9 in PyTorch's convention) -> ReLU -> pooling).

**Errors.** Under a local rule each layer's input is a constant (the authors detach every layer's output), so
a tap's error trains only its own layer (its conv, its batch norms; a pre-act layer's BN_pre too, which sits
after the detach), and the shortcut's parameters learn from the last tap's error at the sum. No error leaves
the block. An error at the block's output (:meth:`LayeredBlock.add_output_error`) either runs through the
whole block and out of it (``through``: a global rule, backprop) or, for a rule that sends it to a block
directly, stops at the last layer, as a tap's error does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from bioplaus import ops
from bioplaus.backend import get_array_module
from bioplaus.kinds.base import BlockForward, BlockKind, Footprint, MaskShape, Tap
from bioplaus.kinds.encoder import BN_ACT_BYTES, PROBES
from bioplaus.ops.bn_act import BnActCache
from bioplaus.ops.pool import decoder_pool_shape
from bioplaus.probes import Cost

TAIL_MOMENTUM = 0.9  # the WRN's final BatchNorm2d(momentum=0.9): running <- 0.1 running + 0.9 batch
TAILS = ("", "avg", "bn-avg", "bn-max2")  # the block ends the network: nothing, global average pool, BN->ReLU->...


class Layer(NamedTuple):
    """One convolutional layer of a block. ``name`` names its arrays (``<name>_W``) and, in a block of
    several layers, its tap. ``drop``: "" (none), "channel" (after φ: post-act after the layer's φ,
    pre-act before the conv) or "element" (on the layer's raw output, the plain WRN's dropout between
    its convolutions)."""

    name: str
    c_in: int
    c_out: int
    kernel: int
    stride: int
    pad: int
    size_in: int
    size: int  # output side
    bias: bool
    pre_act: bool = False  # BN_pre -> φ (-> channel dropout) before the conv
    post_act: bool = True  # BN -> φ after the conv; else the layer passes its raw output and its heads read φ(BN_head)
    drop: str = ""


class Shortcut(NamedTuple):
    """The block's shortcut: ``kind`` "identity", "conv-bn" (1x1 no bias, BN) or "conv-bias" (1x1 with bias)."""

    kind: str
    c_in: int = 0
    c_out: int = 0
    stride: int = 1


class OutputError(NamedTuple):
    """An error at the block's output o, handed to :meth:`LayeredBlock.backward` after the taps' errors."""

    do: Any
    through: bool


@dataclass
class LayerCache:
    """One layer's forward, for its backward: the ops' caches (None where the layer has no such op)."""

    conv: Any = None
    pre: Any = None  # BN_pre (fused with φ), or φ alone
    drop_in: Any = None  # pre-act channel dropout
    bn: Any = None  # post-act BN (alone on the last layer, where the shortcut joins before φ; else fused with φ)
    act: Any = None  # post-act φ (after the sum) or φ alone without batch norm
    head: Any = None  # pre-act: the heads' BN_head and φ
    drop: Any = None  # post-act channel dropout, or the element dropout on a pre-act layer's output


@dataclass
class LayeredCache:
    """The block's forward, for its backward: per layer, the shortcut's and the tail's caches."""

    x_shape: tuple
    layers: list = field(default_factory=list)
    short_conv: Any = None
    short_bn: Any = None
    tail_bn: Any = None
    tail_pool: Any = None
    o_shape: tuple = ()


def _add(a, b):
    return b if a is None else (a if b is None else a + b)


class LayeredBlock(BlockKind):
    """A block of :class:`Layer` s with an optional :class:`Shortcut` (see the module docstring). Subclasses
    give :meth:`layers` and :meth:`shortcut` from the spec (``c_in``, ``c_out``, ``stride``, ``size`` its
    output side), and the layer names :meth:`describe` prints."""

    counts_head_bn = False  # the authors count a non-pre-act layer's head BN (it exists under --backprop too)

    def layers(self, spec) -> list[Layer]:
        raise NotImplementedError

    def shortcut(self, spec) -> Shortcut | None:
        return None

    # ------------------------------------------------------------------ shapes
    def _tap_name(self, spec, layer: Layer) -> str:
        return layer.name if len(self.layers(spec)) > 1 else ""

    def taps(self, spec) -> tuple[Tap, ...]:
        taps = []
        for L in self.layers(spec):
            window, pad, (oh, ow) = decoder_pool_shape(L.c_out, L.size, spec.dim_in_decoder or 2048)
            taps.append(Tap(self._tap_name(spec, L), L.c_in, L.c_out, L.size, True, L.kernel, L.stride, L.pad,
                            tuple(window), tuple(pad), L.c_out * oh * ow, spec.conv_algorithm))
        return tuple(taps)

    def output_shape(self, spec) -> tuple[int, ...]:
        last = self.layers(spec)[-1]
        if spec.tail in ("avg", "bn-avg"):
            return (last.c_out, 1, 1)
        if spec.tail == "bn-max2":
            return (last.c_out, last.size // 2, last.size // 2)
        return (last.c_out, last.size, last.size)

    def mask_shapes(self, spec, n: int) -> tuple[MaskShape, ...]:
        masks = []
        for L in self.layers(spec):
            if L.drop == "channel":
                side, c = (L.size_in, L.c_in) if L.pre_act else (L.size, L.c_out)
                masks.append(MaskShape((n, c, side, side), True))
            elif L.drop == "element":
                masks.append(MaskShape((n, L.c_out, L.size, L.size)))
        return tuple(masks)

    def weight_names(self, spec) -> tuple[str, ...]:
        """Every convolution's weight: the layers' and the shortcut's."""
        s = self.shortcut(spec)
        return (*(f"{L.name}_W" for L in self.layers(spec)), *(("short_W",) if s and s.kind != "identity" else ()))

    def num_parameters(self, spec, batch_norm: bool) -> int:
        """The convolutions (and biases), the post-act BNs, the pre-act BN_pre, a non-pre-act head BN where
        the authors count it (the WRN's stem), the shortcut and the tail's BN (both as theirs, also without
        batch norm elsewhere)."""
        n = 0
        for L in self.layers(spec):
            n += L.c_out * L.c_in * L.kernel * L.kernel + (L.c_out if L.bias else 0)
            if batch_norm:
                n += 2 * L.c_in if L.pre_act else 0
                n += 2 * L.c_out if L.post_act or (self.counts_head_bn and not L.pre_act) else 0
        s = self.shortcut(spec)
        if s is not None and s.kind != "identity":
            n += s.c_out * s.c_in + (2 * s.c_out if s.kind == "conv-bn" else s.c_out)
        if spec.tail.startswith("bn"):
            n += 2 * self.layers(spec)[-1].c_out
        return n

    def describe(self, spec, batch_norm: bool, nonlin: str, dropout: float) -> str:
        parts = []
        for L in self.layers(spec):
            conv = f"Conv{L.kernel}x{L.kernel}(s{L.stride}{'' if L.bias else ', no bias'}) {L.c_in}->{L.c_out}"
            if L.pre_act:
                drop = f" -> ChannelDropout({dropout:g})" if L.drop == "channel" and dropout > 0 else ""
                parts.append(f"BN -> {nonlin}{drop} -> {conv}")
            elif L.post_act:
                drop = f" -> ChannelDropout({dropout:g})" if L.drop == "channel" and dropout > 0 else ""
                parts.append(f"{conv} -> BN -> {nonlin}{drop}")
            else:
                parts.append(conv)
            if L.drop == "element" and dropout > 0:
                parts.append(f"Dropout({dropout:g})")
        s = self.shortcut(spec)
        short = {"identity": " (+ identity)", "conv-bn": " (+ 1x1 conv, BN)", "conv-bias": " (+ 1x1 conv)"}
        tail = {"": "", "avg": " -> AvgPool", "bn-avg": " -> BN -> ReLU -> AvgPool",
                "bn-max2": " -> BN -> ReLU -> MaxPool2x2"}[spec.tail]
        size = self.layers(spec)[-1].size
        return f"{self.name}: {' -> '.join(parts)}{short[s.kind] if s else ''} @ {size}x{size}{tail}"

    # ------------------------------------------------------------------ arrays
    def init(self, spec, batch_norm: bool, rng) -> tuple[dict, dict]:
        """Each conv's W (and b) uniform ±1/√fan_in as PyTorch's Conv2d, drawn layer by layer, then the
        shortcut's; batch norms γ = 1, β = 0, running mean 0 and variance 1."""
        p: dict = {}
        r: dict = {}

        def bn(name: str, c: int) -> None:
            p[f"{name}_gamma"], p[f"{name}_beta"] = np.ones(c), np.zeros(c)
            r[f"{name}_mean"], r[f"{name}_var"] = np.zeros(c), np.ones(c)

        for L in self.layers(spec):
            bound = 1.0 / math.sqrt(L.c_in * L.kernel * L.kernel)
            p[f"{L.name}_W"] = rng.uniform(-bound, bound, (L.c_out, L.c_in, L.kernel, L.kernel))
            if L.bias:
                p[f"{L.name}_b"] = rng.uniform(-bound, bound, L.c_out)
            if batch_norm:
                if L.pre_act:
                    bn(f"{L.name}_pre", L.c_in)
                bn(L.name if L.post_act else f"{L.name}_head", L.c_out)
        s = self.shortcut(spec)
        if s is not None and s.kind != "identity":
            bound = 1.0 / math.sqrt(s.c_in)
            p["short_W"] = rng.uniform(-bound, bound, (s.c_out, s.c_in, 1, 1))
            if s.kind == "conv-bias":
                p["short_b"] = rng.uniform(-bound, bound, s.c_out)
            else:
                bn("short", s.c_out)
        if spec.tail.startswith("bn"):
            bn("tail", self.layers(spec)[-1].c_out)
        return p, r

    # ------------------------------------------------------------------ math
    def forward(self, x, p: dict, running: dict, spec, train: bool, masks, slope: float) -> BlockForward:
        """x -> (h at each tap), (each layer's input), o, cache, new running statistics."""
        layers = self.layers(spec)
        new_running = dict(running)
        cache = LayeredCache(x.shape)
        masks = list(masks) if masks is not None else []

        def bn_act(name: str, a, act_slope: float, momentum: float = 0.1):
            if f"{name}_gamma" not in p:  # no batch norm: φ alone
                return ops.act_forward(a, act_slope)
            out, c, mean, var = ops.bn_act_forward(a, p[f"{name}_gamma"], p[f"{name}_beta"], running[f"{name}_mean"],
                                                   running[f"{name}_var"], train, act_slope, momentum)
            new_running[f"{name}_mean"], new_running[f"{name}_var"] = mean, var
            return out, c

        def bn_alone(name: str, a):
            out, c, mean, var = ops.batchnorm_forward(a, p[f"{name}_gamma"], p[f"{name}_beta"],
                                                      running[f"{name}_mean"], running[f"{name}_var"], train)
            new_running[f"{name}_mean"], new_running[f"{name}_var"] = mean, var
            return out, c

        s = None
        short = self.shortcut(spec)
        if short is not None:
            s = x
            if short.kind != "identity":
                s, cache.short_conv = ops.conv2d_forward(x, p["short_W"], p.get("short_b"), short.stride, 0)
                if short.kind == "conv-bn":
                    s, cache.short_bn = bn_alone("short", s)
        hs, inputs = [], []
        u = x
        for i, L in enumerate(layers):
            lc = LayerCache()
            last = i == len(layers) - 1
            inputs.append(u)
            v = u
            if L.pre_act:
                v, lc.pre = bn_act(f"{L.name}_pre", u, slope)
                if L.drop == "channel" and masks:
                    v, lc.drop_in = ops.dropout_forward(v, masks.pop(0))
            a, lc.conv = ops.conv2d_forward(v, p[f"{L.name}_W"], p.get(f"{L.name}_b"), L.stride, L.pad,
                                            spec.conv_algorithm)
            del v
            if L.post_act:
                if last and s is not None:  # BN, the shortcut joins, then φ
                    z = a
                    if f"{L.name}_gamma" in p:
                        z, lc.bn = bn_alone(L.name, a)
                    h, lc.act = ops.act_forward(z + s, slope)
                else:
                    h, lc.bn = bn_act(L.name, a, slope)
                out = h
                if L.drop == "channel" and masks:
                    out, lc.drop = ops.dropout_forward(h, masks.pop(0))
            else:
                if last and s is not None:
                    a = a + s
                out = a
                h, lc.head = bn_act(f"{L.name}_head", a, slope)
                if L.drop == "element" and masks:
                    out, lc.drop = ops.dropout_forward(a, masks.pop(0))
            hs.append(h)
            cache.layers.append(lc)
            u = out
        o = u
        if spec.tail.startswith("bn"):  # the WRN's F.relu(bn1(x)): ReLU whatever the network's φ
            o, cache.tail_bn = bn_act("tail", o, 0.0, TAIL_MOMENTUM)
        if spec.tail in ("avg", "bn-avg"):
            o, cache.tail_pool = ops.avgpool2d_forward(o, (o.shape[2], o.shape[3]))
        elif spec.tail == "bn-max2":
            o, cache.tail_pool = ops.maxpool2d_forward(o, 2)
        cache.o_shape = o.shape
        return BlockForward(tuple(hs), tuple(inputs), o, cache, new_running)

    def add_output_error(self, dhs: list, do, cache, through: bool) -> list:
        """The error at o travels with the taps' errors to :meth:`backward`, which carries it through the
        tail and the last layer's output (and, when ``through``, through every layer and out of the block)."""
        return [*dhs, OutputError(do, through)]

    def output_backward(self, do, cache: LayeredCache):
        raise NotImplementedError("a layered block takes the error at its output with add_output_error")

    def _tail_backward(self, do, cache: LayeredCache, spec, grads: dict):
        do = do.reshape(cache.o_shape)
        if spec.tail in ("avg", "bn-avg"):
            do = ops.avgpool2d_backward(do, cache.tail_pool)
        elif spec.tail == "bn-max2":
            do = ops.maxpool2d_backward(do, cache.tail_pool)
        if spec.tail.startswith("bn"):
            do, grads["tail_gamma"], grads["tail_beta"] = ops.bn_act_backward(do, cache.tail_bn)
        return do

    def backward(self, dhs, cache: LayeredCache, spec, need_dx: bool, overwrite_dh: bool = False, carry=None):
        """The taps' errors (None where a tap has none), then optionally an :class:`OutputError` -> (δx or
        None, grads). A layer that receives no error at all gets no gradients. δx is None unless the output
        error runs ``through`` and ``need_dx``."""
        layers = self.layers(spec)
        dhs = list(dhs)
        out_err = dhs.pop() if len(dhs) == len(layers) + 1 else None
        through = out_err is not None and out_err.through
        grads: dict = {}
        d_out = self._tail_backward(out_err.do, cache, spec, grads) if out_err is not None else None
        d_sum = None  # the error at the point where the shortcut joins
        dx = None
        for i in reversed(range(len(layers))):
            L, lc = layers[i], cache.layers[i]
            last = i == len(layers) - 1
            dh = dhs[i]
            if d_out is not None and lc.drop is not None:
                d_out = ops.dropout_backward(d_out, lc.drop)
            if L.post_act:
                d = _add(d_out, dh)  # the error at h
                if d is None:
                    continue
                if last and lc.act is not None:  # φ after the sum; BN alone before it
                    dz = ops.act_backward(d, lc.act)
                    d_sum = dz
                    if lc.bn is not None:
                        da, grads[f"{L.name}_gamma"], grads[f"{L.name}_beta"] = ops.batchnorm_backward(dz, lc.bn)
                    else:
                        da = dz
                elif isinstance(lc.bn, BnActCache):
                    da, grads[f"{L.name}_gamma"], grads[f"{L.name}_beta"] = ops.bn_act_backward(d, lc.bn)
                else:
                    da = ops.act_backward(d, lc.bn)
            else:
                da = d_out
                if dh is not None:
                    if isinstance(lc.head, BnActCache):
                        d_head, grads[f"{L.name}_head_gamma"], grads[f"{L.name}_head_beta"] = ops.bn_act_backward(
                            dh, lc.head)
                    else:
                        d_head = ops.act_backward(dh, lc.head)
                    da = _add(da, d_head)
                if da is None:
                    continue
                if last and self.shortcut(spec) is not None:
                    d_sum = da
            need_dv = L.pre_act or (through and (i > 0 or need_dx))
            dv, grads[f"{L.name}_W"], db = ops.conv2d_backward(da, lc.conv, need_dx=need_dv)
            if db is not None:
                grads[f"{L.name}_b"] = db
            del da
            if L.pre_act:
                if lc.drop_in is not None:
                    dv = ops.dropout_backward(dv, lc.drop_in)
                if isinstance(lc.pre, BnActCache):
                    dv, grads[f"{L.name}_pre_gamma"], grads[f"{L.name}_pre_beta"] = ops.bn_act_backward(dv, lc.pre)
                else:
                    dv = ops.act_backward(dv, lc.pre)
            d_out = dv if through else None
            if i == 0 and through and need_dx:
                dx = dv
        short = self.shortcut(spec)
        if short is not None and d_sum is not None:
            ds = d_sum
            if short.kind == "conv-bn":
                ds, grads["short_gamma"], grads["short_beta"] = ops.batchnorm_backward(ds, cache.short_bn)
            if short.kind != "identity":
                ds, grads["short_W"], db = ops.conv2d_backward(ds, cache.short_conv, need_dx=through and need_dx)
                if db is not None:
                    grads["short_b"] = db
            if through and need_dx:
                dx = _add(dx, ds)
        return dx, grads

    # ------------------------------------------------------------------ declared
    def _weights(self, p: dict) -> list:
        return [v for k, v in sorted(p.items()) if k.endswith("_W")]

    def probes(self, spec):
        return PROBES

    def snapshot(self, p: dict):
        return {k: p[k].copy() for k in p if k.endswith("_W")}

    def probe_values(self, p: dict, snapshot) -> dict:
        """The norms over every convolution of the block (its layers' and the shortcut's), as one vector."""
        xp = get_array_module(next(iter(p.values())))
        norm2 = sum(xp.sum(p[k] * p[k]) for k in snapshot)
        upd2 = sum(xp.sum((p[k] - snapshot[k]) ** 2) for k in snapshot)
        return {"weight_norm": xp.sqrt(norm2), "update_norm": xp.sqrt(upd2)}

    def cost(self, spec, batch: int, need_dx: bool) -> Cost:
        """Every convolution's forward and weight gradient (a pre-act layer's error also reaches its
        input, for BN_pre), the shortcut, and batch norm and φ's passes over each layer's output."""
        macs = passes = elements = 0
        for L in self.layers(spec):
            m = batch * L.c_out * L.c_in * L.kernel * L.kernel * L.size * L.size
            macs += m
            passes += m * (2 if (need_dx or L.pre_act) else 1)
            elements += batch * L.c_out * L.size * L.size * (2 if not L.post_act else 1)
        short = self.shortcut(spec)
        if short is not None and short.kind != "identity":
            side = self.layers(spec)[-1].size
            m = batch * short.c_out * short.c_in * side * side
            macs += m
            passes += m * (2 if need_dx else 1)
        return Cost(macs, passes, BN_ACT_BYTES * elements)

    def workspace_bytes(self, spec, batch: int, gpu: bool, itemsize: int) -> int:
        """The largest of its convolutions' buffers, by the algorithm each runs by on that device (ops.conv)."""
        return max(ops.conv.workspace_bytes((batch, L.c_in, L.size_in, L.size_in), (L.c_out, L.c_in, L.kernel, L.kernel),
                                            L.stride, L.pad, spec.conv_algorithm, gpu, itemsize)
                   for L in self.layers(spec))

    def footprint(self, spec) -> Footprint:
        """What a step keeps per sample: every layer's output and its head's h (the caches stay until the
        block's backward), and the largest im2col workspace."""
        hidden = sum(L.c_out * L.size * L.size * (2 if not L.post_act else 1) for L in self.layers(spec))
        work = max(L.c_in * L.kernel * L.kernel * L.size * L.size for L in self.layers(spec))
        return Footprint(hidden, work)

