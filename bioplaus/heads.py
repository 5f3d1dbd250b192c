"""Local heads: the small learners a block trains itself against, and the error each sends to its h.

Nøkland & Eidnes (2019), §3. A head reads the block's output ``h`` (before dropout), or ``pool(h)``,
its average-pooled copy (conv blocks, until ``C·h·w <= dim_in_decoder``), computes a local loss and
returns the error ``δ`` it sends back to what it read, with its own weights' gradients::

    pred, exact      logits = dec_W · pool(h) + dec_b     L = CE(logits, y)            δ = dec_Wᵀ ∂L/∂logits
    pred, feedback   logits = dec_W · pool(h) + dec_b     L = BCE(logits, 1[Y·P > 0])  δ = Bᵀ ∂L/∂logits
    sim, learned     z = sim_W * h  (3x3 conv or dense)   L = mean((S(z) − S(Y))²)     δ = sim_Wᵀ ∂L/∂z
    sim, direct      z = pool(h)                          L = mean((S(z) − S(Y·P))²)   δ = ∂L/∂pool(h)
  unsupervised (the authors' --loss-unsup, weighted α, the supervised heads 1 − α):
    unsup sim        z = sim_W * h (or h in bpf rules)    L = mean((S(z) − S(x))²)     x: the block's input
    unsup recon      x̂ = φ(dec_W^T(h) + dec_xb)           L = mean((x̂ − x)²)           (not in the first block)

Trained: ``dec_W, dec_b, sim_W`` (with the block's optimizer, as the authors). Fixed, never trained
and never seen by the optimizer: the feedback matrix ``B`` (uniform ±1/√D) and the block's label
projection ``P`` (classes × target_proj_size, uniform ±1/√classes), shared by its bpf heads.

A head applies its loss weight to the loss gradient (``w · ∂L``), so a rule's δh is the plain sum
of its heads' errors (:func:`bioplaus.rules.local_error`). Lines that are *not* gradients are marked
``# NOT A GRADIENT``.

A head reads one tap of a block (:class:`bioplaus.kinds.Tap`: the block's h, or one of several inside
a residual block) and declares what it records (:meth:`Head.probes`: its losses, its local predictor's
error, an alignment angle), its arrays' shapes and what a step of it costs; the trainer, the log, the
NaN check and the split planner take these from it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from bioplaus import ops
from bioplaus.backend import get_array_module
from bioplaus.kinds import Tap
from bioplaus.probes import ERROR, LAST, MEAN, Cost, Probe


class HeadResult(NamedTuple):
    """What a head's forward gives: its loss (0-d), statistics (0-d device arrays) and backward cache."""

    loss: object
    stats: dict
    cache: object


class Targets(NamedTuple):
    """What a tap's heads may compare with: the input of the tap's layer x (a constant), labels y (N,),
    one-hot Y (N, K); and the block's φ slope, whether x is the network's input, and the tap itself."""

    x: object
    y: object
    Y: object
    slope: float = 0.0
    first: bool = False
    tap: Tap | None = None


class PredCache(NamedTuple):
    """What :meth:`PredHead.backward` needs: the loss gradient at the logits, the decoder's cache and the
    shape of what the head read."""

    dlogits: Any  # (N, K) or (N, T)
    dec: Any  # ops.DenseCache
    shape: tuple


class SimCache(NamedTuple):
    """What :meth:`SimHead.backward` needs: the loss gradient at S, S's cache (used up by the backward) and
    the learned projection's cache (None when nothing is learned before S)."""

    dS: Any  # (N, N)
    similarity: Any
    proj: Any


class ReconCache(NamedTuple):
    """What :meth:`ReconHead.backward` needs: the loss gradient at x̂, φ's cache, the decoder's cache and
    whether it is a transposed convolution."""

    dx_hat: Any
    act: Any
    dec: Any
    conv: bool


def _uniform(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape)


class Head:
    """What every head has (subclasses override): a ``name`` its loss weight is looked up by
    (``pred``, ``sim`` or ``unsup``), whether it reads pool(h) or h, whether it is supervised,
    whether it needs the tap's label projection P; ``init``, ``forward``, ``backward``; and what it
    declares: ``probes`` (the statistics its forward and ``alignment`` give), ``shapes`` of its arrays
    and the ``cost`` of a step."""

    name = "head"
    label = ""  # what --describe calls its trained weights ("" : its name)
    reads_pooled = False
    supervised = True
    uses_projection = False

    def applies(self, tap: Tap, first: bool) -> bool:
        """False where the head has nothing to learn (reconstruction of the network's input: ``first``)."""
        return True

    def init(self, tap: Tap, num_classes: int, target_proj_size: int, rng):
        """``(trainable params, fixed arrays)`` of this head at a tap, on the host."""
        return {}, {}

    def probes(self) -> tuple[Probe, ...]:
        """What its forward's statistics and its ``alignment`` record (the log writes exactly these)."""
        return ()

    def shapes(self, tap: Tap, num_classes: int, target_proj_size: int) -> tuple[dict, dict]:
        """``(trainable, fixed)`` array name -> shape at a tap (a head shares an array with another by
        giving it the same name). By default read off :meth:`init`, with a throwaway stream."""
        p, f = self.init(tap, num_classes, target_proj_size, np.random.default_rng(0))
        return {k: np.shape(v) for k, v in p.items()}, {k: np.shape(v) for k, v in f.items()}

    def part(self, array: str, fixed: bool) -> str:
        """The part of the head ``--describe`` lists an array under: its trained weights together (under
        ``label``, or its name), each fixed matrix on its own."""
        label = self.label or self.name
        return f"{label} {array}" if fixed else label

    def cost(self, tap: Tap, batch: int, num_classes: int, target_proj_size: int) -> Cost:
        """One step of the head on ``batch`` samples. By default that of a dense layer holding all of its
        arrays (forward, weight gradient, error to h); the built-in heads count their own."""
        trainable, fixed = self.shapes(tap, num_classes, target_proj_size)
        macs = batch * sum(math.prod(s) for s in (*trainable.values(), *fixed.values()))
        return Cost(macs, 2 * macs)

    def forward(self, read, t: Targets, p: dict, f: dict) -> HeadResult:
        raise NotImplementedError

    def backward(self, cache, weight: float, p: dict, f: dict):
        """``(δ of what the head read, grads of its own weights)`` for the loss weighted by ``weight``."""
        raise NotImplementedError

    def alignment(self, p: dict, f: dict) -> dict:
        """Alignment measures of the head's weights (logged per epoch), as 0-d device arrays."""
        return {}


class LabelProjection:
    """``P``: a fixed random projection of the one-hot labels (classes × target_proj_size)."""

    @staticmethod
    def init(num_classes: int, target_proj_size: int, rng: np.random.Generator) -> np.ndarray:
        return _uniform(rng, (num_classes, target_proj_size), 1.0 / math.sqrt(num_classes))

    @staticmethod
    def codes(P):
        """Binary label codes of the pred-bpf head: row c is 1[e_c·P > 0]. (K, T)"""
        return (P > 0).astype(P.dtype)


class PredHead(Head):
    """A dense decoder from pool(h) to class scores (exact) or to the binary label code (feedback).

    exact:     L = CE(dec_W · pool(h) + dec_b, y);       δpool(h) = dec_Wᵀ · ∂L/∂logits
    feedback:  L = BCE(dec_W · pool(h) + dec_b, 1[Y·P > 0]) (mean over entries);
               δpool(h) = Bᵀ · ∂L/∂logits, B fixed random of dec_W's shape (feedback alignment)
    The decoder's own weights learn from their exact gradient in both; ``error_pred`` is the error of
    its local prediction (argmax of the scores; the most likely label code in the feedback case).
    """

    name = "pred"
    label = "pred decoder"
    reads_pooled = True
    supervised = True

    def __init__(self, feedback: bool) -> None:
        self.feedback = feedback
        self.uses_projection = feedback

    def __repr__(self) -> str:
        return f"PredHead(feedback={self.feedback})"

    def init(self, tap: Tap, num_classes: int, target_proj_size: int, rng):
        """Decoder weights start at zero, as the authors' (``(params, fixed)`` on the host)."""
        D = tap.dec_features
        if not self.feedback:
            return {"dec_W": np.zeros((num_classes, D)), "dec_b": _uniform(rng, (num_classes,), 1.0 / math.sqrt(D))}, {}
        T = target_proj_size
        return ({"dec_W": np.zeros((T, D)), "dec_b": np.zeros(T)},
                {"B": _uniform(rng, (T, D), 1.0 / math.sqrt(D))})

    def forward(self, pooled, t: Targets, p: dict, f: dict) -> HeadResult:
        y, Y = t.y, t.Y
        flat = pooled.reshape(pooled.shape[0], -1)  # (N, D_dec)
        logits, dec_cache = ops.dense_forward(flat, p["dec_W"], p["dec_b"])  # (N, K) or (N, T)
        if not self.feedback:
            loss, dlogits = ops.softmax_cross_entropy(logits, y)
            correct = ops.count_correct(logits, y)
        else:
            t = (Y @ f["P"] > 0).astype(pooled.dtype)  # (N, T) NOT A GRADIENT: random projection of the labels
            loss, dlogits = ops.sigmoid_bce_with_logits(logits, t)
            correct = _count_code_correct(logits, y, f["P"])
        stats = {"correct_pred": correct, "loss_pred": loss}
        return HeadResult(loss, stats, PredCache(dlogits, dec_cache, pooled.shape))

    def backward(self, cache: PredCache, weight: float, p: dict, f: dict):
        """``(δpool(h), grads)`` for the loss weighted by ``weight``."""
        dlogits = weight * cache.dlogits
        if not self.feedback:
            dflat, dW, db = ops.dense_backward(dlogits, cache.dec)  # through dec_W^T
        else:
            _, dW, db = ops.dense_backward(dlogits, cache.dec, need_dx=False)
            dflat = dlogits @ f["B"]  # (N, D_dec) NOT A GRADIENT: feedback alignment, B instead of dec_W
        return dflat.reshape(cache.shape), {"dec_W": dW, "dec_b": db}

    def probes(self) -> tuple[Probe, ...]:
        what = ("sigmoid binary cross-entropy of the block's decoder against the label's random binary code"
                if self.feedback else "local prediction loss of the block")  # the second as format-1 logs say it
        probes = (Probe("loss_pred", "nats", what, MEAN, loss=True),
                  Probe("error_pred", "%", "error of the block's local predictor", ERROR, key="correct_pred"))
        if self.feedback:
            probes += (Probe("fa_angle", "degrees", "angle between the pred decoder's weights and its fixed "
                             "feedback matrix (bpf)", LAST),)
        return probes

    def part(self, array: str, fixed: bool) -> str:
        return f"pred feedback {array}" if fixed else self.label

    def shapes(self, tap: Tap, num_classes: int, target_proj_size: int) -> tuple[dict, dict]:
        D, outs = tap.dec_features, (target_proj_size if self.feedback else num_classes)
        return {"dec_W": (outs, D), "dec_b": (outs,)}, ({"B": (outs, D)} if self.feedback else {})

    def cost(self, tap: Tap, batch: int, num_classes: int, target_proj_size: int) -> Cost:
        """The decoder's forward, its weight gradient and the error it sends to pool(h)."""
        macs = batch * tap.dec_features * (target_proj_size if self.feedback else num_classes)
        return Cost(macs, 2 * macs)

    def alignment(self, p: dict, f: dict) -> dict:
        """The angle between the decoder's weights and the feedback matrix that stands in for them."""
        if not self.feedback:
            return {}
        return {"fa_angle": angle_degrees(get_array_module(p["dec_W"]), p["dec_W"], f["B"])}


class SimHead(Head):
    """Similarity matching: the batch's similarity matrix S of what the head reads against the labels'.

    learned:  L = mean((S(sim_W * h) − S(Y))²),   sim_W a 3x3 conv (conv blocks) or dense, no bias;
              δh = sim_Wᵀ · ∂L/∂z   (one learned layer between h and S)
    direct:   L = mean((S(pool(h)) − S(Y·P))²);   δpool(h) = ∂L/∂pool(h)   (nothing learned before S)
    """

    name = "sim"
    label = "sim projection"
    supervised = True

    def __init__(self, learned: bool, use_std: bool = True) -> None:
        self.learned = learned
        self.use_std = use_std  # False: the authors' --no-similarity-std (S of the flattened map)
        self.reads_pooled = not learned
        self.uses_projection = not learned

    def __repr__(self) -> str:
        return f"SimHead(learned={self.learned}, use_std={self.use_std})"

    def init(self, tap: Tap, num_classes: int, target_proj_size: int, rng):
        if not self.learned:
            return {}, {}
        C = tap.c_out
        if tap.spatial:
            return {"sim_W": _uniform(rng, (C, C, 3, 3), 1.0 / math.sqrt(9 * C))}, {}
        return {"sim_W": _uniform(rng, (C, C), 1.0 / math.sqrt(C))}, {}

    def _target(self, t: Targets, f: dict):
        if self.learned:
            return ops.label_similarity(t.Y)  # (N, N)
        return ops.label_similarity(t.Y @ f["P"])  # (N, N) NOT A GRADIENT: random projection of the labels

    stat = "loss_sim"

    def probes(self) -> tuple[Probe, ...]:
        return (Probe(self.stat, "1", "local similarity-matching loss of the block", MEAN, loss=True),)

    def shapes(self, tap: Tap, num_classes: int, target_proj_size: int) -> tuple[dict, dict]:
        if not self.learned:
            return {}, {}
        return {"sim_W": (tap.c_out, tap.c_out, 3, 3) if tap.spatial else (tap.c_out, tap.c_out)}, {}

    def cost(self, tap: Tap, batch: int, num_classes: int, target_proj_size: int) -> Cost:
        """The learned 3x3 conv (or dense layer) with its weight gradient and error, and S forward and
        backward on what S reads: (N, C) channel deviations of a map, else the flattened rows."""
        C, N = tap.c_out, batch
        pixels = tap.size * tap.size if tap.spatial else 1
        cost = Cost()
        if self.learned:
            macs = N * pixels * C * C * (9 if tap.spatial else 1)
            cost += Cost(macs, 2 * macs)
        side_pixels = pixels if not self.reads_pooled else tap.dec_features // C
        width = C if not tap.spatial or (self.use_std and C > 3 and side_pixels > 1) else C * side_pixels
        return cost + Cost(N * N * width, N * N * width)  # X Xᵀ; (dR + dRᵀ) X

    def forward(self, h, t: Targets, p: dict, f: dict) -> HeadResult:
        if self.learned:
            if h.ndim == 4:
                algorithm = t.tap.conv_algorithm if t.tap is not None else "auto"
                z, proj_cache = ops.conv2d_forward(h, p["sim_W"], None, 1, 1, algorithm)  # (N, C, H, W)
            else:
                z, proj_cache = ops.dense_forward(h, p["sim_W"], None)  # (N, D)
        else:
            z, proj_cache = h, None  # no learned layer between h and S
        target = self._target(t, f)
        # memory: the learned z is this head's own array, so S's cache may centre it in place
        S, s_cache = ops.similarity_forward(z, overwrite=self.learned, use_std=self.use_std)  # (N, N)
        del z  # its cache keeps what S's backward needs (memory: z is a full feature map)
        loss, dS = ops.mse(S, target)
        return HeadResult(loss, {self.stat: loss}, SimCache(dS, s_cache, proj_cache))

    def backward(self, cache: SimCache, weight: float, p: dict, f: dict):
        """``(δ of what the head read, grads)`` for the loss weighted by ``weight``; uses up the cache."""
        dS, s_cache, proj_cache = cache
        del cache
        dz = ops.similarity_backward(weight * dS, s_cache, overwrite=True)  # s_cache is used up here
        del s_cache
        if not self.learned:
            return dz, {}
        if dz.ndim == 4:  # dz is ours: the conv may write δh into its buffer (memory)
            dh, dW, _ = ops.conv2d_backward(dz, proj_cache, overwrite_dout=True)
        else:
            dh, dW, _ = ops.dense_backward(dz, proj_cache)  # through sim_W^T (one-step backprop)
        return dh, {"sim_W": dW}


class InputSimHead(SimHead):
    """Unsupervised similarity matching (the authors' ``--loss-unsup sim``): the batch's similarity
    matrix of the block's features against that of its own input, a constant::

        L = mean((S(z) − S(x))²),   z = sim_W * h (learned: the same projection as the block's sim
                                    head when it has one) or z = h (in the bpf rules)
    """

    name = "unsup"
    supervised = False
    stat = "loss_unsup"

    def __init__(self, learned: bool, use_std: bool = True) -> None:
        super().__init__(learned, use_std)
        self.reads_pooled = False
        self.uses_projection = False

    def __repr__(self) -> str:
        return f"InputSimHead(learned={self.learned}, use_std={self.use_std})"

    def _target(self, t: Targets, f: dict):
        return ops.similarity_forward(t.x, use_std=self.use_std)[0]  # (N, N) of the block's input

    def probes(self) -> tuple[Probe, ...]:
        return (Probe(self.stat, "1", "unsupervised local loss of the block (--loss-unsup sim: S(h) against the "
                      "similarity matrix of the block's input)", MEAN, loss=True),)


class ReconHead(Head):
    """Unsupervised reconstruction (the authors' ``--loss-unsup recon``): a decoder maps h back to the
    block's input, through the block's own φ::

        x̂ = φ(rec_W h + rec_b)   (dense; a transposed convolution of the block's geometry for conv blocks)
        L = mean((x̂ − x)²)        δh = rec_Wᵀ · ∂L/∂a   (one learned layer, as the sim head's)

    Not in the network's first block (the authors', where x is the image).
    """

    name = "unsup"
    label = "recon decoder"
    supervised = False
    reads_pooled = False
    uses_projection = False

    def __repr__(self) -> str:
        return "ReconHead()"

    def applies(self, tap: Tap, first: bool) -> bool:
        return not first

    def init(self, tap: Tap, num_classes: int, target_proj_size: int, rng):
        shapes = self.shapes(tap, num_classes, target_proj_size)[0]
        k = tap.kernel if tap.spatial else 1  # PyTorch's ConvTranspose2d(c_out, c_in, k), or Linear(c_out, c_in)
        bound = 1.0 / math.sqrt((tap.c_in if tap.spatial else tap.c_out) * k * k)
        return {"rec_W": _uniform(rng, shapes["rec_W"], bound), "rec_b": _uniform(rng, shapes["rec_b"], bound)}, {}

    def probes(self) -> tuple[Probe, ...]:
        return (Probe("loss_unsup", "1", "unsupervised local loss of the block (--loss-unsup recon: mean squared "
                      "error of its reconstruction of the block's input)", MEAN, loss=True),)

    def shapes(self, tap: Tap, num_classes: int, target_proj_size: int) -> tuple[dict, dict]:
        k = tap.kernel
        W = (tap.c_out, tap.c_in, k, k) if tap.spatial else (tap.c_in, tap.c_out)
        return {"rec_W": W, "rec_b": (tap.c_in,)}, {}

    def cost(self, tap: Tap, batch: int, num_classes: int, target_proj_size: int) -> Cost:
        """The decoder (the block's own layer, transposed) forward, its weight gradient and error to h."""
        pixels = tap.size * tap.size if tap.spatial else 1
        macs = batch * pixels * math.prod(self.shapes(tap, num_classes, target_proj_size)[0]["rec_W"])
        return Cost(macs, 2 * macs)

    def forward(self, h, t: Targets, p: dict, f: dict) -> HeadResult:
        x = t.x
        if h.ndim == 4:
            a, dec_cache = ops.conv2d_transpose_forward(h, p["rec_W"], p["rec_b"], x.shape, t.tap.stride, t.tap.pad)
        else:
            x = x.reshape(x.shape[0], -1)
            a, dec_cache = ops.dense_forward(h, p["rec_W"], p["rec_b"])  # (N, D_in)
        x_hat, act_cache = ops.act_forward(a, t.slope)
        loss, dx_hat = ops.mse(x_hat, x)
        return HeadResult(loss, {"loss_unsup": loss}, ReconCache(dx_hat, act_cache, dec_cache, h.ndim == 4))

    def backward(self, cache: ReconCache, weight: float, p: dict, f: dict):
        da = ops.act_backward(weight * cache.dx_hat, cache.act, overwrite_dh=True)
        if cache.conv:
            dh, dW, db = ops.conv2d_transpose_backward(da, cache.dec)
        else:
            dh, dW, db = ops.dense_backward(da, cache.dec)
        return dh, {"rec_W": dW, "rec_b": db}


def _count_code_correct(logits, y, P):
    """Local predictor of a pred-bpf head: the class whose label code is most likely under σ(logits).

    log p(code_c) = Σ_t [c_t log σ(l_t) + (1 − c_t) log(1 − σ(l_t))] = l·c + Σ_t log(1 − σ(l_t)),
    since log σ(l) − log(1 − σ(l)) = l; the last sum is the same for every class, so the argmax
    over classes is that of ``logits @ codesᵀ``.
    """
    codes = LabelProjection.codes(P)  # (K, T)
    return ops.count_correct(logits @ codes.T, y)  # (N, K) scores up to a per-row constant


def angle_degrees(xp, a, b):
    """Angle between two arrays seen as vectors, in degrees (a 0-d device array; NaN if either is 0)."""
    a, b = a.ravel(), b.ravel()
    cos = xp.dot(a, b) / (xp.linalg.norm(a) * xp.linalg.norm(b))
    return xp.degrees(xp.arccos(xp.clip(cos, -1.0, 1.0)))
