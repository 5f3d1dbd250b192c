"""Learning rules: where each block's error signal δh comes from. The whole difference between
backprop, local learning and the backprop-free rules is in this file.

Every hidden block computes ``h = φ(BN(W*x + b))`` and updates ``W ← opt(W, ∂/∂W)`` from an error
``δh`` at ``h``; given ``δh`` its own backward is the same for every rule
(:func:`bioplaus.blocks.block_backward`). The rules differ only in ``δh``, which is the sum of up to
three parts: the error from the layers above (carried down by Wᵀ or a stand-in), an error sent to
the block directly from the output or the target, and the block's local heads' errors
(:mod:`bioplaus.heads`)::

    glob           δh_l = (∂L_out/∂o_l)·∂o_l/∂h_l           backprop: every layer's Wᵀ carries the error
    glob+sim/pred/predsim   the same + the block's local losses (the authors' local losses without detach)
    pred           δh_l = ∂L_pred,l/∂h_l                    L_pred = CE(dec_W·pool(h) + dec_b, y)
    sim            δh_l = ∂L_sim,l/∂h_l                     L_sim  = mean((S(sim_W*h) − S(Y))²)
    predsim        δh_l = (1−β)·∂L_pred/∂h + β·∂L_sim/∂h
    pred-bpf       δh_l = pool^T(∂L/∂ŷ · B)                  L = BCE(ŷ, 1[Y·P > 0]); B fixed random, not dec_W
    sim-bpf        δh_l = ∂/∂h mean((S(pool(h)) − S(Y·P))²)   no learned layer before S
    predsim-bpf    δh_l = (1−β)·pred-bpf + β·sim-bpf
    fa             as glob, with a fixed random B_l in place of every W_lᵀ      (Lillicrap et al. 2016)
    sign-symmetry  as glob, with sign(W_l)ᵀ in place of W_lᵀ                    (Liao et al. 2016)
    kolen-pollack  as fa, but B_l receives W_l's updates and weight decay → W_lᵀ (Akrout et al. 2019)
    dfa            δo_l = e · D_l: the output error e straight to every block   (Nøkland 2016)
    drtp           δo_l = Y · D_l / N: a fixed projection of the one-hot target (Frenkel et al. 2021)

(δo_l is an error at the block's output o = pool(dropout(h)); it reaches h through the pool and the
dropout mask.) In the local rules (the paper's six, and drtp) the input ``x`` of each block is a
constant: no error crosses a block boundary, so a block needs only its input batch, the labels, its
own arrays and its own random stream, which is what lets a pipeline train every block at once
(:mod:`bioplaus.stage`). The output layer always learns from the output cross-entropy on the last
block's output (scaled by 1−β in the predsim variants, as the authors did).

Lines that are *not* gradients are marked ``# NOT A GRADIENT``. In the bpf rules and the feedback
rules (fa, dfa, drtp, kolen-pollack) no op ever carries an error through a forward weight (every
dense/conv backward runs with ``need_dx=False``); sign symmetry carries it through sign(W) only.
``tests/test_rules.py`` checks this by spying on the ops.

A new rule is one entry in :data:`RULES` (:func:`register` for a rule of one's own) and, when it
needs a new kind of local learner or error path, one small class beside the heads or the carriers
below; see the README's section for developers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from bioplaus import ops
from bioplaus.backend import Backend, get_array_module
from bioplaus.blocks import (
    Blocks,
    block_backward,
    block_forward,
    init_block,
    init_output,
    init_stream,
    output_backward,
    output_layer_forward,
)
from bioplaus.errors import ConfigError
from bioplaus.heads import InputSimHead, LabelProjection, PredHead, ReconHead, SimHead, Targets, angle_degrees
from bioplaus.models import BlockSpec, NetSpec

FEEDBACK_STREAM = 20_000  # feedback matrices of block i come from init stream FEEDBACK_STREAM + i (output: + 9_999)


# ------------------------------------------------------------------------------ error carriers
class Backprop:
    """The error at a layer's output reaches its input through ``Wᵀ``: the gradient."""

    name = "backprop"
    learns = False

    def init(self, W_shape, rng) -> dict:
        return {}

    def matrix(self, W, fb: dict):
        return None  # None: the layer's own backward, through W itself

    def alignment(self, W, fb: dict) -> dict:
        return {}


class FeedbackAlignment(Backprop):
    """``B_l`` fixed random of W's shape (uniform ±1/√fan_in, as W) carries the error instead of W."""

    name = "feedback alignment"

    def init(self, W_shape, rng) -> dict:
        fan_in = int(np.prod(W_shape[1:]))
        return {"B": rng.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), size=W_shape)}

    def matrix(self, W, fb: dict):
        return fb["B"]  # NOT A GRADIENT: feedback alignment

    def alignment(self, W, fb: dict) -> dict:
        return {"fb_angle": angle_degrees(get_array_module(W), fb["B"], W)}


class SignSymmetry(Backprop):
    """``sign(W_l)`` carries the error: the magnitudes of the forward weights are not transported."""

    name = "sign symmetry"

    def matrix(self, W, fb: dict):
        return get_array_module(W).sign(W)  # NOT A GRADIENT: only the signs of W travel back

    def alignment(self, W, fb: dict) -> dict:
        xp = get_array_module(W)
        return {"fb_angle": angle_degrees(xp, xp.sign(W), W)}


class KolenPollack(FeedbackAlignment):
    """``B_l`` carries the error and receives W_l's own updates and weight decay:
    ``B ← B + ΔW − lr·wd·B``, so B − W decays and B turns towards W (Akrout et al. 2019)."""

    name = "Kolen-Pollack"
    learns = True

    def after_update(self, fb: dict, W_before, W_after, lr: float, weight_decay: float) -> None:
        B = fb["B"]
        B += W_after - W_before  # NOT A GRADIENT: the update W received, mirrored
        if weight_decay:
            B -= B.dtype.type(lr * weight_decay) * B


class DirectFeedback:
    """DFA: the output error ``e = ∂L_out/∂logits`` reaches block l's output through a fixed random
    ``D_l (K, out_features_l)``: ``δo_l = e · D_l``. Needs the forward pass to the top first."""

    name = "direct feedback"
    needs_output_error = True

    def init(self, num_classes: int, out_features: int, rng) -> dict:
        bound = 1 / math.sqrt(num_classes)
        return {"D": rng.uniform(-bound, bound, size=(num_classes, out_features))}

    def error(self, e, Y, fb: dict, shape):
        return (e @ fb["D"]).reshape(shape)  # NOT A GRADIENT: a fixed random projection of the output error


class DirectTargetProjection(DirectFeedback):
    """DRTP: the one-hot target, not an error, reaches block l's output through a fixed random ``D_l``:
    ``δo_l = Y · D_l / N``. Nothing from above is needed: a local rule."""

    name = "direct random target projection"
    needs_output_error = False

    def error(self, e, Y, fb: dict, shape):
        return (Y @ fb["D"]).reshape(shape) * Y.dtype.type(1.0 / Y.shape[0])  # NOT A GRADIENT: the target


# ------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Rule:
    """What a variant is made of: its local heads, how errors cross layers (a carrier, or none: a
    local rule), and errors sent directly to every block (DFA, DRTP)."""

    summary: str  # one line for --list-variants
    heads: tuple = ()  # local heads of every block (bioplaus.heads), in the order their errors are added
    carrier: Backprop | None = None  # how the output error travels down through the layers; None: it does not
    direct: DirectFeedback | None = None  # an error sent to every block's output directly
    beta_mix: bool = False  # pred weighted 1−β, sim β, the output layer 1−β (the authors' predsim)
    default_beta: float = 0.99
    output_starts_at_zero: bool = True  # the authors zero the output layer whenever local losses are on
    alpha: float = 0.0  # weight of the unsupervised heads (the supervised ones get 1 − α)
    reference: str = "Nøkland & Eidnes (2019)"

    @property
    def global_error(self) -> bool:
        """An error computed at the top reaches the blocks: every block waits for the forward pass."""
        return self.carrier is not None or (self.direct is not None and self.direct.needs_output_error)

    @property
    def is_local(self) -> bool:
        """No error crosses a block boundary: blocks can train one after another, or all at once."""
        return not self.global_error

    @property
    def uses_projection(self) -> bool:
        return any(h.uses_projection for h in self.heads)

    @property
    def pred(self) -> str | None:
        """How the pred head's error reaches h: "exact" (dec_Wᵀ), "feedback" (fixed B), or None."""
        return next(("feedback" if h.feedback else "exact" for h in self.heads if h.name == "pred"), None)

    @property
    def sim(self) -> str | None:
        """What the sim head compares: "learned" (S of a learned layer of h), "direct" (S of pool(h)), or None."""
        return next(("learned" if h.learned else "direct" for h in self.heads if h.name == "sim"), None)

    def weights(self, beta: float) -> tuple[dict, float]:
        """(loss weight of each head by name, weight of the output cross-entropy). The output weight
        scales the output layer's own update in the local rules (1−β in predsim, as the authors); under
        a global error the output error is the error itself, unscaled."""
        if self.beta_mix:
            w, w_out = {"pred": 1.0 - beta, "sim": beta}, 1.0 - beta
        else:
            w, w_out = {h.name: 1.0 for h in self.heads if h.supervised}, 1.0
        if self.alpha or any(not h.supervised for h in self.heads):
            w = {k: (1.0 - self.alpha) * v for k, v in w.items()}
            w["unsup"] = self.alpha
        return w, w_out


PRED, PRED_FEEDBACK = PredHead(feedback=False), PredHead(feedback=True)
SIM, SIM_DIRECT = SimHead(learned=True), SimHead(learned=False)
BACKPROP = Backprop()

RULES: dict[str, Rule] = {
    "glob": Rule("global backprop of the output loss; no local heads (the paper's baseline)", carrier=BACKPROP,
                 output_starts_at_zero=False, reference="Rumelhart et al. (1986)"),
    "pred": Rule("local prediction loss: a decoder to class scores, error through its transpose", (PRED,)),
    "sim": Rule("local similarity matching through one learned 3x3 conv (or dense) layer", (SIM,)),
    "predsim": Rule("(1-β)·pred + β·sim (β 0.99)", (PRED, SIM), beta_mix=True),
    "pred-bpf": Rule("pred to a random binary label code, error through a fixed random matrix B", (PRED_FEEDBACK,)),
    "sim-bpf": Rule("similarity of the pooled h itself against a random label projection", (SIM_DIRECT,)),
    "predsim-bpf": Rule("(1-β)·pred-bpf + β·sim-bpf (β 0.01): no weight used in both directions",
                        (PRED_FEEDBACK, SIM_DIRECT), beta_mix=True, default_beta=0.01),
    "glob+sim": Rule("global backprop plus each block's local sim loss (paper Table 9)", (SIM,), carrier=BACKPROP),
    "glob+pred": Rule("global backprop plus each block's local pred loss (local losses without detach)", (PRED,),
                      carrier=BACKPROP),
    "glob+predsim": Rule("global backprop plus each block's local predsim loss (without detach)", (PRED, SIM),
                         carrier=BACKPROP, beta_mix=True),
    "fa": Rule("feedback alignment: a fixed random B_l instead of every W_l^T", carrier=FeedbackAlignment(),
               output_starts_at_zero=False, reference="Lillicrap et al. (2016)"),
    "sign-symmetry": Rule("sign(W_l)^T instead of W_l^T", carrier=SignSymmetry(), output_starts_at_zero=False,
                          reference="Liao et al. (2016); Xiao et al. (2018)"),
    "kolen-pollack": Rule("feedback alignment whose B_l receives W_l's updates and decay, so B_l -> W_l^T",
                          carrier=KolenPollack(), output_starts_at_zero=False, reference="Akrout et al. (2019)"),
    "dfa": Rule("direct feedback alignment: the output error to every block through a fixed random matrix",
                direct=DirectFeedback(), output_starts_at_zero=False, reference="Nøkland (2016)"),
    "drtp": Rule("direct random target projection: a fixed random projection of the target is each block's error",
                 direct=DirectTargetProjection(), output_starts_at_zero=False, reference="Frenkel et al. (2021)"),
}
VARIANTS = tuple(RULES)  # the built-in rules; RULES may grow (register)
REFERENCE_RULE = "glob"  # true backprop: what the probe compares every rule's updates with


def get_rule(variant: str) -> Rule:
    try:
        return RULES[variant]
    except KeyError:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(RULES)}") from None


def register(name: str, rule: Rule) -> None:
    """Add a learning rule under ``name`` (a researcher's own, defined in any module): the
    configuration, the trainer, the run loop and the log take it like the built-in ones."""
    if not name or name in RULES:
        raise ValueError(f"a rule named {name!r} exists already" if name else "a rule needs a name")
    if not isinstance(rule, Rule):
        raise TypeError("register() takes a bioplaus.rules.Rule")
    RULES[name] = rule


def compose(cfg) -> Rule:
    """The rule a configuration trains with: its variant's, with the authors' switches applied
    (``--loss-unsup sim|recon`` with ``--alpha``: an unsupervised head in every block;
    ``--no-similarity-std``: similarity matrices of flattened maps)."""
    rule = get_rule(cfg.variant)
    use_std = not getattr(cfg, "no_similarity_std", False)
    heads = tuple(SimHead(h.learned, use_std) if isinstance(h, SimHead) else h for h in rule.heads)
    unsup = getattr(cfg, "loss_unsup", "none")
    if unsup == "sim":
        heads += (InputSimHead(learned=not rule.uses_projection and rule.sim != "direct", use_std=use_std),)
    elif unsup == "recon":
        heads += (ReconHead(),)
    if heads == rule.heads and unsup == "none":
        return rule
    return dataclasses.replace(rule, heads=heads, alpha=getattr(cfg, "alpha", 0.0) if unsup != "none" else 0.0)


def _as_rule(rule: Rule | str) -> Rule:
    return get_rule(rule) if isinstance(rule, str) else rule


def loss_weights(variant: str, beta: float) -> tuple[float, float, float]:
    """(weight of pred, weight of sim, weight of the output cross-entropy) of a variant."""
    heads, w_out = get_rule(variant).weights(beta)
    return heads.get("pred", 1.0), heads.get("sim", 1.0), w_out


# Update callback: update(block_index, grads), block_index counted in the network, or -1 for the output layer.
Update = Callable[[int, dict], None]


class StepResult(NamedTuple):
    """What a training step gives back (device arrays; loss and correct are None without the output layer)."""

    output: object  # the last block's output o (the next stage's input)
    running: list  # each block's new batch-norm running statistics
    loss: object  # output cross-entropy (0-d)
    correct: object  # output layer's correct count (0-d)
    block_stats: list  # per block: local losses and the local predictor's correct count (0-d)


def one_hot(y, num_classes: int, dtype):
    xp = get_array_module(y)
    return (y[:, None] == xp.arange(num_classes)[None, :]).astype(dtype)  # (N, K)


# ------------------------------------------------------------------------------ initialisation
def init_blocks(spec: NetSpec, rule: Rule, seed: int, target_proj_size: int, slope: float, backend: Backend,
                dtype=np.float32, first: int = 0, stop: int | None = None, with_output: bool | None = None) -> Blocks:
    """Blocks ``first..stop-1`` of ``spec`` under ``rule`` (all by default), drawn on the host from
    keyed streams and moved to the device: every split of a network, and a CPU and a GPU run of the
    same seed, start from identical arrays. The output layer comes with the last block."""
    stop = len(spec.blocks) if stop is None else stop
    with_output = stop == len(spec.blocks) if with_output is None else with_output
    K = spec.num_classes
    params, fixed, running, feedback = [], [], [], []
    dev = lambda d: {k: backend.asarray(v, dtype=dtype) for k, v in d.items()}
    for i in range(first, stop):
        b = spec.blocks[i]
        rng = init_stream(seed, i)
        p, r = init_block(b, spec.batch_norm, rng)
        f: dict = {}
        supervised = [h for h in rule.heads if h.supervised]
        for head in supervised:  # drawn in the heads' order, then the label projection, then the rest
            hp, hf = head.init(b, K, target_proj_size, rng)
            p.update(hp)
            f.update(hf)
        if rule.uses_projection:
            f["P"] = LabelProjection.init(K, target_proj_size, rng)
        for head in rule.heads:
            if not head.supervised and not (isinstance(head, ReconHead) and i == 0):
                hp, hf = head.init(b, K, target_proj_size, rng)
                p.update({k: v for k, v in hp.items() if k not in p})  # a shared projection stays shared
                f.update(hf)
        fb_rng = init_stream(seed, FEEDBACK_STREAM + i)
        fb = rule.carrier.init(_w_shape(b), fb_rng) if rule.carrier is not None else {}
        if rule.direct is not None:
            fb.update(rule.direct.init(K, b.out_features, fb_rng))
        params.append(dev(p))
        fixed.append(dev(f))
        running.append(dev(r))
        feedback.append(dev(fb))
    out, out_fb = None, {}
    if with_output:
        out = dev(init_output(spec.out_features_in, K, seed, zero_weights=rule.output_starts_at_zero))
        if rule.carrier is not None:
            out_fb = dev(rule.carrier.init((K, spec.out_features_in), init_stream(seed, FEEDBACK_STREAM + 9_999)))
    return Blocks(spec.blocks[first:stop], first, params, fixed, running, out, slope, K, feedback, out_fb)


def _w_shape(b: BlockSpec) -> tuple:
    return (b.c_out, b.c_in, b.kernel, b.kernel) if b.kind == "conv" else (b.c_out, b.c_in)


def init_network(spec: NetSpec, cfg, backend: Backend, dtype=np.float32) -> Blocks:
    """The whole network of ``spec`` for a configuration (variant, seed, target_proj_size, nonlin)."""
    from bioplaus.blocks import LEAKY_SLOPE

    slope = LEAKY_SLOPE if cfg.nonlin == "leakyrelu" else 0.0
    return init_blocks(spec, compose(cfg), cfg.seed, cfg.target_proj_size, slope, backend, dtype)


# ------------------------------------------------------------------------------ local errors
def local_error(rule: Rule, h, t: Targets, p: dict, f: dict, spec: BlockSpec, weights: dict,
                backward: bool = True, overwrite_h: bool = False):
    """The block's local losses and, when ``backward``, its error δh = Σ_heads w·δh_head and the heads'
    gradients (a weight two heads share gets the sum). Returns ``(δh or None, head_grads, stats)``.

    h: the block's output before dropout, (N, D) or (N, C, H, W); ``t``: the block's input and labels.
    ``overwrite_h=True``: the caller needs h no more; once the heads have read it, δh may be written
    in its buffer (peak memory).
    """
    xp = get_array_module(h)
    heads = [head for head in rule.heads if head.applies(t)]
    # heads that read pool(h) share one pooled copy (conv blocks whose map exceeds dim_in_decoder)
    pooled, pool_cache = h, None
    if spec.kind == "conv" and spec.dec_window != (1, 1) and any(head.reads_pooled for head in heads):
        pooled, pool_cache = ops.avgpool2d_forward(h, spec.dec_window, spec.dec_pad)
    d_pooled = dh = None  # the heads' errors at pool(h) and at h
    grads: dict = {}
    stats: dict = {}
    for head in heads:
        _loss, head_stats, cache = head.forward(pooled if head.reads_pooled else h, t, p, f)
        stats.update(head_stats)
        if not backward:
            continue
        d, g = head.backward(cache, weights[head.name], p, f)  # w·δ of what the head read
        del cache
        for k, v in g.items():
            grads[k] = v if k not in grads else grads[k] + v
        if head.reads_pooled:
            d_pooled = d if d_pooled is None else d_pooled + d
        else:
            dh = d if dh is None else dh + d
        del d
    if not backward:
        return None, grads, stats
    if d_pooled is not None:  # δh += pool^T(δpool(h))
        if pool_cache is None:
            dh = d_pooled if dh is None else dh + d_pooled
        elif dh is not None:  # in place: dh is a head's own fresh array (memory)
            dh = ops.avgpool2d_backward(d_pooled, pool_cache, add_to=dh)
        else:  # h was read only through the pooled copy: its buffer may take δh (memory)
            dh = ops.avgpool2d_backward(d_pooled, pool_cache, out=h if overwrite_h else None)
    if dh is None:
        dh = xp.zeros_like(h)
    return dh, grads, stats


def head_alignment(rule: Rule, p: dict, f: dict, fb: dict | None = None) -> dict:
    """Per-block alignment measures: the bpf decoder's fa_angle; the carrier's fb_angle (the angle
    between the matrix that carries the error and the forward weights)."""
    out: dict = {}
    for head in rule.heads:
        out.update(head.alignment(p, f))
    if rule.carrier is not None:
        out.update(rule.carrier.alignment(p["W"], fb or {}))
    return out


def _carry(rule: Rule, spec: BlockSpec, W, fb: dict):
    """How the error at block's encoder output reaches its input under ``rule`` (None: through W)."""
    M = rule.carrier.matrix(W, fb)
    if M is None:
        return None
    if spec.kind == "dense":
        return lambda da, enc_cache: da @ M  # NOT A GRADIENT: M stands in for W
    return lambda da, enc_cache: ops.conv2d_input_grad(da, M, enc_cache.shape, spec.stride, spec.pad)  # NOT A GRADIENT


# ------------------------------------------------------------------------------ training steps
def train_step(net: Blocks, rule: Rule | str, beta: float, x, y, masks: list, update: Update) -> StepResult:
    """One mini-batch under ``rule`` (a Rule or a variant name). Calls ``update(i, grads)`` as soon as
    block i's gradients are ready (immediately after its own backward in local rules; i counts
    blocks in the network) and ``update(-1, grads)`` for the output layer.

    ``net`` may be a run of blocks that does not start or end the network (a pipeline stage) under a
    local rule: then ``x`` is the previous stage's output, and without the output layer the result's
    loss and correct count are None. A global rule needs the whole network.
    """
    rule = _as_rule(rule)
    Y = one_hot(y, net.num_classes, x.dtype)
    weights, w_out = rule.weights(beta)
    if rule.global_error:
        if net.first != 0 or net.out is None:
            raise ValueError("a rule with a global error needs the whole network")
        return _global_step(net, rule, x, y, Y, masks, update, weights)
    return _local_step(net, rule, x, y, Y, masks, update, weights, w_out)


def _local_step(net, rule, x, y, Y, masks, update, weights, w_out) -> StepResult:
    running, block_stats = [], []
    for j, spec in enumerate(net.specs):
        p, f = net.params[j], net.fixed[j]
        t = Targets(x, y, Y, net.slope, net.first + j == 0, spec)
        h, x, cache, new_running = block_forward(x, p, net.running[j], spec, True, masks[j], net.slope)
        dh, head_grads, stats = None, {}, {}
        if rule.heads:  # h's buffer may take δh unless it is also the block's output (no dropout, no pool)
            dh, head_grads, stats = local_error(rule, h, t, p, f, spec, weights, overwrite_h=x is not h)
        if rule.direct is not None:  # drtp: the target, projected, arrives at the block's output
            d_direct = output_backward(rule.direct.error(None, Y, net.feedback[j], x.shape), cache)
            dh = d_direct if dh is None else dh + d_direct
        del h, t  # the block's own backward needs only its cache (memory)
        # the input is a constant: no error leaves; dh is ours, its buffer may be reused (memory)
        _, grads = block_backward(dh, cache, spec, need_dx=False, overwrite_dh=True)
        grads.update(head_grads)
        update(net.first + j, grads)
        running.append(new_running)
        block_stats.append(stats)
        del cache, dh  # the block's activations are free once it has updated
    if net.out is None:
        return StepResult(x, running, None, None, block_stats)
    logits, out_cache = output_layer_forward(x, net.out)  # x: last block's output, a constant here
    loss, dlogits = ops.softmax_cross_entropy(logits, y)
    _, gW, gb = ops.dense_backward(w_out * dlogits, out_cache, need_dx=False)
    update(-1, {"W": gW, "b": gb})
    return StepResult(x, running, loss, ops.count_correct(logits, y), block_stats)


def _global_step(net, rule, x, y, Y, masks, update, weights) -> StepResult:
    caches, hs, ts, running = [], [], [], []
    for j, spec in enumerate(net.specs):
        t = Targets(x, y, Y, net.slope, j == 0, spec)
        h, x, cache, new_running = block_forward(x, net.params[j], net.running[j], spec, True, masks[j], net.slope)
        caches.append(cache)
        hs.append(h if rule.heads else None)  # plain backprop needs only the caches
        ts.append(t if rule.heads else None)
        running.append(new_running)
    logits, out_cache = output_layer_forward(x, net.out)
    loss, dlogits = ops.softmax_cross_entropy(logits, y)
    carrier = rule.carrier
    M_out = carrier.matrix(net.out["W"], net.out_feedback) if carrier is not None else None
    if carrier is not None and M_out is None:
        do, gW, gb = ops.dense_backward(dlogits, out_cache)  # error into the last block, through W_out^T
    else:
        _, gW, gb = ops.dense_backward(dlogits, out_cache, need_dx=False)
        do = dlogits @ M_out if carrier is not None else None  # NOT A GRADIENT: M_out stands in for W_out
    update(-1, {"W": gW, "b": gb})
    block_stats: list = [None] * len(net.specs)
    for j in reversed(range(len(net.specs))):
        spec, p = net.specs[j], net.params[j]
        if carrier is not None:
            dh = output_backward(do, caches[j])
        else:  # dfa: the output error reaches this block directly
            dh = output_backward(rule.direct.error(dlogits, Y, net.feedback[j], caches[j]["o_shape"]), caches[j])
        head_grads, stats = {}, {}
        if rule.heads:  # glob+sim and kin: the block's local error joins the global one
            dh_local, head_grads, stats = local_error(rule, hs[j], ts[j], p, net.fixed[j], spec, weights)
            dh = dh + dh_local
        carry = _carry(rule, spec, p["W"], net.feedback[j]) if carrier is not None else None
        # dh is a fresh array (or the fresh δx from the block above): handed over, as the cache is
        need_dx = j > 0 and carrier is not None
        do, grads = block_backward(dh, caches[j], spec, need_dx=need_dx, overwrite_dh=True, carry=carry)
        grads.update(head_grads)
        update(net.first + j, grads)
        block_stats[j] = stats
        caches[j] = hs[j] = ts[j] = None
    return StepResult(x, running, loss, ops.count_correct(logits, y), block_stats)


# ------------------------------------------------------------------------------ evaluation
def evaluate_batch(net: Blocks, rule: Rule | str, x, y) -> StepResult:
    """Eval mode (running BN statistics, no dropout): each block's local losses and local predictor's
    correct count (no gradients), and, with the output layer, its loss and correct count. ``running``
    is the unchanged statistics."""
    rule = _as_rule(rule)
    Y = one_hot(y, net.num_classes, x.dtype)
    weights = {head.name: 1.0 for head in rule.heads}
    block_stats = []
    for j, spec in enumerate(net.specs):
        t = Targets(x, y, Y, net.slope, net.first + j == 0, spec)
        h, x, _, _ = block_forward(x, net.params[j], net.running[j], spec, False, None, net.slope)
        stats = {}
        if rule.heads:
            _, _, stats = local_error(rule, h, t, net.params[j], net.fixed[j], spec, weights, backward=False)
        block_stats.append(stats)
    if net.out is None:
        return StepResult(x, net.running, None, None, block_stats)
    logits, _ = output_layer_forward(x, net.out)
    loss, _ = ops.softmax_cross_entropy(logits, y)
    return StepResult(x, net.running, loss, ops.count_correct(logits, y), block_stats)


def describe_rules(names: Sequence[str] | None = None) -> str:
    """One line per rule: its name, what it does, its reference (for --list-variants)."""
    names = list(names or RULES)
    width = max(len(n) for n in names)
    return "\n".join(f"{n:{width}s}  {RULES[n].summary} [{RULES[n].reference}]" for n in names)
