"""Learning rules: where each block's error signal δh comes from. The whole difference between
backprop, local learning and the backprop-free rules is in this file.

Every hidden block computes ``h = φ(BN(W*x + b))`` and updates ``W ← opt(W, ∂/∂W)`` from an error
``δh`` at ``h``; given ``δh`` its own backward is the same for every rule (its kind's
``backward``, :mod:`bioplaus.kinds`). The rules differ only in ``δh``, which is the sum of up to
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
dropout mask.) What a block computes is its kind's (:mod:`bioplaus.kinds`): the rules ask it for its
forward, its backward, the weight a carrier stands in for and its taps (where the heads read h; one in
a plain block, one per layer in a residual block), and switch on nothing. In the local rules (the
paper's six, and drtp) the input ``x`` of each block is a constant: no error crosses a block boundary,
so a block needs only its input batch, the labels, its own arrays and its own random stream, which is
what lets a pipeline train every block at once (:mod:`bioplaus.stage`). The output layer always
learns from the output cross-entropy on the last block's output (scaled by 1−β in the predsim
variants, as the authors did).

Lines that are *not* gradients are marked ``# NOT A GRADIENT``. In the bpf rules and the feedback
rules (fa, dfa, drtp, kolen-pollack) no op ever carries an error through a forward weight (every
dense/conv backward runs with ``need_dx=False``); sign symmetry carries it through sign(W) only.
``tests/test_rules.py`` checks this by spying on the ops.

What happens after an update is the rule's too (:func:`apply_update`: Kolen–Pollack's B receives the
change W received); the stage only calls it. Heads and carriers declare what they record
(:func:`declared_probes`), so a rule of one's own is logged and checked without naming its statistics
anywhere else.

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
from bioplaus.blocks import Block, Blocks, State, init_output, init_stream, output_layer_forward
from bioplaus.errors import ConfigError
from bioplaus.heads import InputSimHead, LabelProjection, PredHead, ReconHead, SimHead, Targets, angle_degrees
from bioplaus.kinds import Tap
from bioplaus.models import NetSpec
from bioplaus.probes import LAST, Cost, Probe, unique

FEEDBACK_STREAM = 20_000  # feedback matrices of block i come from init stream FEEDBACK_STREAM + i (output: + 9_999)


# ------------------------------------------------------------------------------ error carriers
FB_ANGLE = Probe("fb_angle", "degrees", "angle between the matrix that carries the error back through the layer "
                 "(feedback alignment's or Kolen-Pollack's B, or sign(W)) and the layer's forward weights", LAST)


class Backprop:
    """The error at a layer's output reaches its input through ``Wᵀ``: the gradient.

    A carrier declares what it records (``probes``), the arrays it keeps per layer (``shapes``) and what
    it adds to a step (``cost``); ``stands_in``: it needs the layer's weight W (its kind's
    ``weight_shape``) to stand in for."""

    name = "backprop"
    learns = False
    stands_in = False

    def init(self, W_shape, rng) -> dict:
        return {}

    def matrix(self, W, fb: dict):
        return None  # None: the layer's own backward, through W itself

    def alignment(self, W, fb: dict) -> dict:
        return {}

    def probes(self) -> tuple[Probe, ...]:
        return ()

    def shapes(self, W_shape) -> dict:
        return {}

    def cost(self, W_shape) -> Cost:
        """Beyond the layer's own backward (which sends the error through W or its stand-in alike)."""
        return Cost()


class FeedbackAlignment(Backprop):
    """``B_l`` fixed random of W's shape (uniform ±1/√fan_in, as W) carries the error instead of W."""

    name = "feedback alignment"
    stands_in = True

    def init(self, W_shape, rng) -> dict:
        fan_in = int(np.prod(W_shape[1:]))
        return {"B": rng.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), size=W_shape)}

    def matrix(self, W, fb: dict):
        return fb["B"]  # NOT A GRADIENT: feedback alignment

    def alignment(self, W, fb: dict) -> dict:
        return {"fb_angle": angle_degrees(get_array_module(W), fb["B"], W)}

    def probes(self) -> tuple[Probe, ...]:
        return (FB_ANGLE,)

    def shapes(self, W_shape) -> dict:
        return {"B": tuple(W_shape)}


class SignSymmetry(Backprop):
    """``sign(W_l)`` carries the error: the magnitudes of the forward weights are not transported."""

    name = "sign symmetry"
    stands_in = True

    def matrix(self, W, fb: dict):
        return get_array_module(W).sign(W)  # NOT A GRADIENT: only the signs of W travel back

    def alignment(self, W, fb: dict) -> dict:
        xp = get_array_module(W)
        return {"fb_angle": angle_degrees(xp, xp.sign(W), W)}

    def probes(self) -> tuple[Probe, ...]:
        return (FB_ANGLE,)

    def cost(self, W_shape) -> Cost:
        return Cost(bytes=8 * math.prod(W_shape))  # sign(W): read W, write its signs


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

    def cost(self, W_shape) -> Cost:
        return Cost(bytes=24 * math.prod(W_shape))  # W's copy before the update, ΔW, B += ΔW (and the decay)


class DirectFeedback:
    """DFA: the output error ``e = ∂L_out/∂logits`` reaches block l's output through a fixed random
    ``D_l (K, out_features_l)``: ``δo_l = e · D_l``. Needs the forward pass to the top first."""

    name = "direct feedback"
    needs_output_error = True

    def init(self, num_classes: int, out_features: int, rng) -> dict:
        bound = 1 / math.sqrt(num_classes)
        return {"D": rng.uniform(-bound, bound, size=self.shapes(num_classes, out_features)["D"])}

    def shapes(self, num_classes: int, out_features: int) -> dict:
        return {"D": (num_classes, out_features)}

    def cost(self, batch: int, num_classes: int, out_features: int) -> Cost:
        return Cost(backward=batch * num_classes * out_features)  # e · D_l

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
    stats: dict  # per layer of the log (a block, or a tap of it): its heads' statistics (0-d), as declared


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
    blocks = []
    dev = lambda d: {k: backend.asarray(v, dtype=dtype) for k, v in d.items()}
    for i in range(first, stop):
        b = spec.blocks[i]
        rng = init_stream(seed, i)
        p, r = b.kind.init(b, spec.batch_norm, rng)
        f: dict = {}
        for k, tap in enumerate(b.kind.taps(b)):  # each tap's heads, in turn, from the block's stream
            tp, tf = _init_heads(rule, tap, i == 0 and k == 0, K, target_proj_size, rng)
            p.update({tap.prefix + name: v for name, v in tp.items()})
            f.update({tap.prefix + name: v for name, v in tf.items()})
        check_block(rule, b)
        fb_rng = init_stream(seed, FEEDBACK_STREAM + i)
        fb = rule.carrier.init(_carried_shape(rule, b), fb_rng) if rule.carrier is not None else {}
        if rule.direct is not None:
            fb.update(rule.direct.init(K, b.out_features, fb_rng))
        blocks.append(Block(dev(p), dev(f), dev(r), dev(fb), spec=b))
    out = None
    if with_output:
        out = State(dev(init_output(spec.out_features_in, K, seed, zero_weights=rule.output_starts_at_zero)))
        if rule.carrier is not None:
            out.feedback = dev(rule.carrier.init((K, spec.out_features_in),
                                                 init_stream(seed, FEEDBACK_STREAM + 9_999)))
    return Blocks(blocks, first, out, slope, K)


def _init_heads(rule: Rule, tap: Tap, first: bool, K: int, T: int, rng) -> tuple[dict, dict]:
    """A tap's head arrays: drawn in the supervised heads' order, then the label projection, then the
    unsupervised heads (a projection two heads share stays shared)."""
    p: dict = {}
    f: dict = {}
    for head in rule.heads:
        if head.supervised and head.applies(tap, first):
            hp, hf = head.init(tap, K, T, rng)
            p.update(hp)
            f.update(hf)
    if rule.uses_projection:
        f["P"] = LabelProjection.init(K, T, rng)
    for head in rule.heads:
        if not head.supervised and head.applies(tap, first):
            hp, hf = head.init(tap, K, T, rng)
            p.update({k: v for k, v in hp.items() if k not in p})  # a shared projection stays shared
            f.update(hf)
    return p, f


def check_block(rule: Rule, b) -> None:
    """ConfigError (one sentence) where ``rule`` cannot train block ``b``: a carrier that stands in for a weight
    the block's kind has not, or an error sent to the block's output that would not reach its inner layers."""
    if rule.carrier is not None and rule.carrier.stands_in and b.kind.weight_shape(b) is None:
        raise ConfigError(f"{rule.carrier.name} needs a weight to stand in for, and a {b.kind.name} block "
                          f"({b.name}) has none; use a local rule or glob")
    if rule.direct is not None and len(b.kind.taps(b)) > 1:
        raise ConfigError(f"{rule.direct.name} sends its error to a block's output only, so the inner layers of a "
                          f"{b.kind.name} block ({b.name}) would never learn; use glob or a local rule")


def check_network(spec: NetSpec, rule: Rule) -> None:
    """:func:`check_block` for every block: a run asks before it creates anything (and before the ranks of a
    pipeline build their stages, each only its own blocks)."""
    for b in spec.blocks:
        check_block(rule, b)


def _carried_shape(rule: Rule, b) -> tuple | None:
    """The weight the rule's carrier stands in for in block ``b`` (:func:`check_block` has refused a kind
    without one)."""
    return b.kind.weight_shape(b)


def init_network(spec: NetSpec, cfg, backend: Backend, dtype=np.float32) -> Blocks:
    """The whole network of ``spec`` for a configuration (variant, seed, target_proj_size, nonlin)."""
    from bioplaus.blocks import LEAKY_SLOPE

    slope = LEAKY_SLOPE if cfg.nonlin == "leakyrelu" else 0.0
    return init_blocks(spec, compose(cfg), cfg.seed, cfg.target_proj_size, slope, backend, dtype)


def tap_arrays(arrays: dict, tap: Tap) -> dict:
    """A tap's heads' view of a block's arrays, by their own names (the block's dict itself for its only tap)."""
    if not tap.prefix:
        return arrays
    n = len(tap.prefix)
    return {k[n:]: v for k, v in arrays.items() if k.startswith(tap.prefix)}


# ------------------------------------------------------------------------------ declarations
def declared_probes(spec: NetSpec, rule: Rule) -> dict[str, tuple[Probe, ...]]:
    """Every statistic a run of ``rule`` on ``spec`` records, by layer of the log: each block's kind's,
    each tap's heads' (under the tap's layer), the carrier's for each block and the output layer
    (``out``); a layer that records nothing is left out. The trainer reduces exactly these, the log writes
    exactly these."""
    out: dict[str, tuple[Probe, ...]] = {}
    for i, b in enumerate(spec.blocks):
        layers: dict[str, list] = {b.name: list(b.kind.probes(b))}
        for k, tap in enumerate(b.kind.taps(b)):
            found = layers.setdefault(tap.layer(b.name), [])
            for head in rule.heads:
                if head.applies(tap, i == 0 and k == 0):
                    found.extend(head.probes())
        if rule.carrier is not None:
            layers[b.name].extend(rule.carrier.probes())
        out.update({layer: unique(probes) for layer, probes in layers.items() if probes})
    if rule.carrier is not None and rule.carrier.probes():
        out["out"] = unique(rule.carrier.probes())
    return out


# ------------------------------------------------------------------------------ local errors
def local_error(rule: Rule, h, t: Targets, p: dict, f: dict, weights: dict, backward: bool = True,
                overwrite_h: bool = False):
    """The local losses of the heads at one tap (``t.tap``) and, when ``backward``, its error δh =
    Σ_heads w·δh_head and the heads' gradients (a weight two heads share gets the sum). Returns
    ``(δh or None, head_grads, stats)``; ``p``/``f``: the tap's arrays (:func:`tap_arrays`).

    h: the tap's output before dropout, (N, D) or (N, C, H, W); ``t``: the tap's input and the labels.
    ``overwrite_h=True``: the caller needs h no more; once the heads have read it, δh may be written
    in its buffer (peak memory).
    """
    xp = get_array_module(h)
    heads = [head for head in rule.heads if head.applies(t.tap, t.first)]
    # heads that read pool(h) share one pooled copy (feature maps that exceed dim_in_decoder)
    pooled, pool_cache = h, None
    if t.tap.pooled and any(head.reads_pooled for head in heads):
        pooled, pool_cache = ops.avgpool2d_forward(h, t.tap.dec_window, t.tap.dec_pad)
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


def tap_errors(rule: Rule, block: Block, hs, inputs, y, Y, slope: float, first: bool, weights: dict,
               backward: bool = True, output=None):
    """:func:`local_error` at every tap of ``block`` (``hs``/``inputs``: its forward's). Returns ``([δh per
    tap], head grads under the tap's array names, {layer: stats})``. ``output``: the block's output o;
    a tap's h that is not o may take its δh in its buffer (peak memory)."""
    dhs, grads, stats = [], {}, {}
    for k, tap in enumerate(block.kind.taps(block.spec)):
        h = hs[k]
        t = Targets(inputs[k], y, Y, slope, first and k == 0, tap)
        dh, g, st = local_error(rule, h, t, tap_arrays(block.params, tap), tap_arrays(block.fixed, tap), weights,
                                backward, overwrite_h=output is not None and h is not output)
        del h, t
        dhs.append(dh)
        grads.update({tap.prefix + key: v for key, v in g.items()})
        stats[tap.layer(block.name)] = st
    return dhs, grads, stats


def alignment(rule: Rule, block: Block, first: bool) -> dict:
    """``(layer, key) -> value`` (0-d device arrays): the alignment of each tap's heads (a bpf decoder's
    fa_angle) and of the carrier (the angle between the matrix that carries the error and W)."""
    out: dict = {}
    for k, tap in enumerate(block.kind.taps(block.spec)):
        p, f = tap_arrays(block.params, tap), tap_arrays(block.fixed, tap)
        for head in rule.heads:
            if head.applies(tap, first and k == 0):
                out.update({(tap.layer(block.name), key): v for key, v in head.alignment(p, f).items()})
    if rule.carrier is not None and rule.carrier.stands_in:
        carried = rule.carrier.alignment(block.params["W"], block.feedback)
        out.update({(block.name, key): v for key, v in carried.items()})
    return out


# ------------------------------------------------------------------------------ updates
def apply_update(rule: Rule, state: State, grads: dict, optimizer, lr: float, weight_decay: float) -> None:
    """Apply a block's (or the output layer's) gradients with its optimizer state, then what the rule
    does after an update: Kolen–Pollack's B receives the change W received, and W's weight decay."""
    carrier = rule.carrier
    W_before = state.params["W"].copy() if carrier is not None and carrier.learns else None
    for key, grad in grads.items():
        optimizer.step(state.params[key], grad, state.opt[key], lr)
    if W_before is not None:  # Kolen-Pollack: the feedback matrix follows W's update
        carrier.after_update(state.feedback, W_before, state.params["W"], lr, weight_decay)


# ------------------------------------------------------------------------------ training steps
def train_step(net: Blocks, rule: Rule | str, beta: float, x, y, masks: list, update: Update) -> StepResult:
    """One mini-batch under ``rule`` (a Rule or a variant name). Calls ``update(i, grads)`` as soon as
    block i's gradients are ready (immediately after its own backward in local rules; i counts
    blocks in the network) and ``update(-1, grads)`` for the output layer. ``masks``: each block's
    dropout masks (:func:`bioplaus.kinds.draw_masks`), or None.

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
    running, stats = [], {}
    for j, block in enumerate(net.blocks):
        spec, kind = block.spec, block.kind
        hs, inputs, x, cache, new_running = kind.forward(x, block.params, block.running, spec, True, masks[j],
                                                         net.slope)
        dhs, head_grads = [None] * len(hs), {}
        if rule.heads:  # a tap's h may take its δh in its buffer unless it is also the block's output
            dhs, head_grads, block_stats = tap_errors(rule, block, hs, inputs, y, Y, net.slope, net.first + j == 0,
                                                      weights, output=x)
            stats.update(block_stats)
        else:
            stats.update({tap.layer(block.name): {} for tap in kind.taps(spec)})
        if rule.direct is not None:  # drtp: the target, projected, arrives at the block's output
            dhs = kind.add_output_error(list(dhs), rule.direct.error(None, Y, block.feedback, x.shape), cache, False)
        del hs, inputs  # the block's own backward needs only its cache (memory)
        # the input is a constant: no error leaves; the errors are ours, their buffers may be reused (memory)
        _, grads = kind.backward(tuple(dhs), cache, spec, need_dx=False, overwrite_dh=True)
        grads.update(head_grads)
        update(net.first + j, grads)
        running.append(new_running)
        del cache, dhs  # the block's activations are free once it has updated
    if net.out is None:
        return StepResult(x, running, None, None, stats)
    logits, out_cache = output_layer_forward(x, net.out.params)  # x: last block's output, a constant here
    loss, dlogits = ops.softmax_cross_entropy(logits, y)
    _, gW, gb = ops.dense_backward(w_out * dlogits, out_cache, need_dx=False)
    update(-1, {"W": gW, "b": gb})
    return StepResult(x, running, loss, ops.count_correct(logits, y), stats)


def _global_step(net, rule, x, y, Y, masks, update, weights) -> StepResult:
    saved, running = [], []
    for j, block in enumerate(net.blocks):
        hs, inputs, x, cache, new_running = block.kind.forward(x, block.params, block.running, block.spec, True,
                                                               masks[j], net.slope)
        saved.append((cache, hs, inputs) if rule.heads else (cache, None, None))  # plain backprop: the caches
        running.append(new_running)
        del hs, inputs
    logits, out_cache = output_layer_forward(x, net.out.params)
    loss, dlogits = ops.softmax_cross_entropy(logits, y)
    carrier = rule.carrier
    M_out = carrier.matrix(net.out.params["W"], net.out.feedback) if carrier is not None else None
    if carrier is not None and M_out is None:
        do, gW, gb = ops.dense_backward(dlogits, out_cache)  # error into the last block, through W_out^T
    else:
        _, gW, gb = ops.dense_backward(dlogits, out_cache, need_dx=False)
        do = dlogits @ M_out if carrier is not None else None  # NOT A GRADIENT: M_out stands in for W_out
    update(-1, {"W": gW, "b": gb})
    stats: dict = {}
    for j in reversed(range(len(net.blocks))):
        block = net.blocks[j]
        spec, kind = block.spec, block.kind
        cache, hs, inputs = saved[j]
        if carrier is None:  # dfa: the output error reaches this block directly
            do = rule.direct.error(dlogits, Y, block.feedback, (x.shape[0], *kind.output_shape(spec)))
        dhs, head_grads = [None] * len(kind.taps(spec)), {}
        if rule.heads:  # glob+sim and kin: each tap's local error joins the global one
            dhs, head_grads, block_stats = tap_errors(rule, block, hs, inputs, y, Y, net.slope, j == 0, weights)
            stats.update(block_stats)
        dhs = kind.add_output_error(list(dhs), do, cache, carrier is not None)
        del hs, inputs
        carry = None
        if carrier is not None and carrier.stands_in and (M := carrier.matrix(block.params["W"], block.feedback)) \
                is not None:
            carry = kind.carry(spec, M)
        # the errors are fresh arrays (or the fresh δx from the block above): handed over, as the cache is
        need_dx = j > 0 and carrier is not None
        do, grads = kind.backward(tuple(dhs), cache, spec, need_dx=need_dx, overwrite_dh=True, carry=carry)
        grads.update(head_grads)
        update(net.first + j, grads)
        saved[j] = None
        del cache, dhs
    return StepResult(x, running, loss, ops.count_correct(logits, y), stats)


# ------------------------------------------------------------------------------ evaluation
def evaluate_batch(net: Blocks, rule: Rule | str, x, y) -> StepResult:
    """Eval mode (running BN statistics, no dropout): each tap's local losses and local predictor's
    correct count (no gradients), and, with the output layer, its loss and correct count. ``running``
    is the unchanged statistics."""
    rule = _as_rule(rule)
    Y = one_hot(y, net.num_classes, x.dtype)
    weights = {head.name: 1.0 for head in rule.heads}
    stats: dict = {}
    for j, block in enumerate(net.blocks):
        hs, inputs, x, _, _ = block.kind.forward(x, block.params, block.running, block.spec, False, None, net.slope)
        if rule.heads:
            stats.update(tap_errors(rule, block, hs, inputs, y, Y, net.slope, net.first + j == 0, weights,
                                    backward=False)[2])
        else:
            stats.update({tap.layer(block.name): {} for tap in block.kind.taps(block.spec)})
        del hs, inputs
    running = [b.running for b in net.blocks]
    if net.out is None:
        return StepResult(x, running, None, None, stats)
    logits, _ = output_layer_forward(x, net.out.params)
    loss, _ = ops.softmax_cross_entropy(logits, y)
    return StepResult(x, running, loss, ops.count_correct(logits, y), stats)


def describe_rules(names: Sequence[str] | None = None) -> str:
    """One line per rule: its name, what it does, its reference (for --list-variants)."""
    names = list(names or RULES)
    width = max(len(n) for n in names)
    return "\n".join(f"{n:{width}s}  {RULES[n].summary} [{RULES[n].reference}]" for n in names)
