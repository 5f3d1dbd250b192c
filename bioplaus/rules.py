"""Learning rules: where each block's error signal δh comes from. The whole difference between
backprop, local learning and the backprop-free versions is in this file.

Nøkland & Eidnes (2019), §3. Every hidden block computes ``h = φ(BN(W*x + b))`` and updates
``W ← opt(W, ∂/∂W)`` from an error ``δh`` at ``h``; given ``δh`` its own backward is the same for
every rule (:func:`bioplaus.blocks.block_backward`). The rules differ only in ``δh``, which is
the backprop error from above, or the sum of the block's local heads' errors
(:mod:`bioplaus.heads`), or both::

    glob         δh_l = (∂L_out/∂o_l)·∂o_l/∂h_l         backprop through every block above
    glob+sim     δh_l = the same + ∂L_sim,l/∂h_l         local sim losses added to the global error
    pred         δh_l = ∂L_pred,l/∂h_l                  L_pred = CE(dec_W·pool(h) + dec_b, y)
    sim          δh_l = ∂L_sim,l/∂h_l                   L_sim  = mean((S(sim_W*h) − S(Y))²)
    predsim      δh_l = (1−β)·∂L_pred/∂h + β·∂L_sim/∂h
    pred-bpf     δh_l = pool^T(∂L/∂ŷ · B)                L = BCE(ŷ, 1[Y·P > 0]); B fixed random, not dec_W
    sim-bpf      δh_l = ∂/∂h mean((S(pool(h)) − S(Y·P))²) no learned layer before S
    predsim-bpf  δh_l = (1−β)·pred-bpf + β·sim-bpf

In the local rules the input ``x`` of each block is a constant: no error crosses a block
boundary, so a block needs only its input batch, the labels, its own arrays and its own random
stream (which is what lets a pipeline train every block at once, :mod:`bioplaus.stage`). The output
layer always learns from the output cross-entropy on the last block's output (scaled by 1−β in the
predsim variants, as the authors did); in local rules that output is a constant too.

In the bpf rules no op ever carries an error through a forward weight (every dense/conv backward
runs with ``need_dx=False``): the only backward left is inside a block, through its own φ and BN to
its own W. ``tests/test_rules.py`` checks this by spying on the ops.

A new rule is one entry in :data:`RULES` (and, when it needs a new kind of local learner, one
small head class beside those in :mod:`bioplaus.heads`); see the README's section for developers.
"""

from __future__ import annotations

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
from bioplaus.heads import LabelProjection, PredHead, SimHead
from bioplaus.models import BlockSpec, NetSpec


@dataclass(frozen=True)
class Rule:
    """What a variant is made of: its local heads, and whether errors also cross blocks (backprop)."""

    summary: str  # one line for --list-variants
    heads: tuple = ()  # local heads of every block (bioplaus.heads), in the order their errors are added
    global_error: bool = False  # the output error is backpropagated through every block
    beta_mix: bool = False  # pred weighted 1−β, sim β, the output layer 1−β (the authors' predsim)
    default_beta: float = 0.99
    output_starts_at_zero: bool = True  # the authors zero the output layer whenever local losses are on
    reference: str = "Nøkland & Eidnes (2019)"

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
        """(loss weight of each head by name, weight of the output cross-entropy)."""
        if self.beta_mix:
            return {"pred": 1.0 - beta, "sim": beta}, 1.0 - beta
        return {h.name: 1.0 for h in self.heads}, 1.0


PRED, PRED_FEEDBACK = PredHead(feedback=False), PredHead(feedback=True)
SIM, SIM_DIRECT = SimHead(learned=True), SimHead(learned=False)

RULES: dict[str, Rule] = {
    "glob": Rule("global backprop of the output loss; no local heads (the paper's baseline)", global_error=True,
                 output_starts_at_zero=False, reference="Rumelhart et al. (1986)"),
    "pred": Rule("local prediction loss: a decoder to class scores, error through its transpose", (PRED,)),
    "sim": Rule("local similarity matching through one learned 3x3 conv (or dense) layer", (SIM,)),
    "predsim": Rule("(1-β)·pred + β·sim (β 0.99)", (PRED, SIM), beta_mix=True),
    "pred-bpf": Rule("pred to a random binary label code, error through a fixed random matrix B", (PRED_FEEDBACK,)),
    "sim-bpf": Rule("similarity of the pooled h itself against a random label projection", (SIM_DIRECT,)),
    "predsim-bpf": Rule("(1-β)·pred-bpf + β·sim-bpf (β 0.01): no weight used in both directions",
                        (PRED_FEEDBACK, SIM_DIRECT), beta_mix=True, default_beta=0.01),
    "glob+sim": Rule("global backprop plus each block's local sim loss (paper Table 9)", (SIM,), global_error=True),
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


# Update callback: update(block_index, grads), block_index counted in the network, or -1 for the output layer.
Update = Callable[[int, dict], None]


class StepResult(NamedTuple):
    """What a training step gives back (device arrays; loss and correct are None without the output layer)."""

    output: object  # the last block's output o (the next stage's input)
    running: list  # each block's new batch-norm running statistics
    loss: object  # output cross-entropy (0-d)
    correct: object  # output layer's correct count (0-d)
    block_stats: list  # per block: local losses and the local predictor's correct count (0-d)


def loss_weights(variant: str, beta: float) -> tuple[float, float, float]:
    """(weight of pred, weight of sim, weight of the output cross-entropy) of a variant."""
    heads, w_out = get_rule(variant).weights(beta)
    return heads.get("pred", 1.0), heads.get("sim", 1.0), w_out


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
    params, fixed, running = [], [], []
    for i in range(first, stop):
        b = spec.blocks[i]
        rng = init_stream(seed, i)
        p, r = init_block(b, spec.batch_norm, rng)
        f: dict = {}
        for head in rule.heads:  # drawn in the heads' order, then the label projection
            hp, hf = head.init(b, K, target_proj_size, rng)
            p.update(hp)
            f.update(hf)
        if rule.uses_projection:
            f["P"] = LabelProjection.init(K, target_proj_size, rng)
        params.append({k: backend.asarray(v, dtype=dtype) for k, v in p.items()})
        fixed.append({k: backend.asarray(v, dtype=dtype) for k, v in f.items()})
        running.append({k: backend.asarray(v, dtype=dtype) for k, v in r.items()})
    out = None
    if with_output:
        host = init_output(spec.out_features_in, K, seed, zero_weights=rule.output_starts_at_zero)
        out = {k: backend.asarray(v, dtype=dtype) for k, v in host.items()}
    return Blocks(spec.blocks[first:stop], first, params, fixed, running, out, slope, K)


def init_network(spec: NetSpec, cfg, backend: Backend, dtype=np.float32) -> Blocks:
    """The whole network of ``spec`` for a configuration (variant, seed, target_proj_size, nonlin)."""
    from bioplaus.blocks import LEAKY_SLOPE

    slope = LEAKY_SLOPE if cfg.nonlin == "leakyrelu" else 0.0
    return init_blocks(spec, get_rule(cfg.variant), cfg.seed, cfg.target_proj_size, slope, backend, dtype)


# ------------------------------------------------------------------------------ local errors
def local_error(rule: Rule, h, y, Y, p: dict, f: dict, spec: BlockSpec, weights: dict,
                backward: bool = True, overwrite_h: bool = False):
    """The block's local losses and, when ``backward``, its error δh = Σ_heads w·δh_head and the heads'
    gradients. Returns ``(δh or None, head_grads, stats)``.

    h: the block's output before dropout, (N, D) or (N, C, H, W); y: labels (N,); Y: one-hot (N, K).
    ``overwrite_h=True``: the caller needs h no more; once the heads have read it, δh may be written
    in its buffer (peak memory).
    """
    xp = get_array_module(h)
    # heads that read pool(h) share one pooled copy (conv blocks whose map exceeds dim_in_decoder)
    pooled, pool_cache = h, None
    if spec.kind == "conv" and spec.dec_window != (1, 1) and any(head.reads_pooled for head in rule.heads):
        pooled, pool_cache = ops.avgpool2d_forward(h, spec.dec_window, spec.dec_pad)
    d_pooled = dh = None  # the heads' errors at pool(h) and at h
    grads: dict = {}
    stats: dict = {}
    for head in rule.heads:
        _loss, head_stats, cache = head.forward(pooled if head.reads_pooled else h, y, Y, p, f)
        stats.update(head_stats)
        if not backward:
            continue
        d, g = head.backward(cache, weights[head.name], p, f)  # w·δ of what the head read
        del cache
        grads.update(g)
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


def head_alignment(rule: Rule, p: dict, f: dict) -> dict:
    """Per-block alignment measures of the rule's heads (for example the bpf decoder's fa_angle)."""
    out: dict = {}
    for head in rule.heads:
        out.update(head.alignment(p, f))
    return out


# ------------------------------------------------------------------------------ training steps
def train_step(net: Blocks, variant: str, beta: float, x, y, masks: list, update: Update) -> StepResult:
    """One mini-batch under ``variant``. Calls ``update(i, grads)`` as soon as block i's gradients are
    ready (immediately after its own backward in local rules; i counts blocks in the network) and
    ``update(-1, grads)`` for the output layer.

    ``net`` may be a run of blocks that does not start or end the network (a pipeline stage) under a
    local rule: then ``x`` is the previous stage's output, and without the output layer the result's
    loss and correct count are None. A global rule needs the whole network.
    """
    rule = get_rule(variant)
    Y = one_hot(y, net.num_classes, x.dtype)
    weights, w_out = rule.weights(beta)
    if rule.global_error:
        if net.first != 0 or net.out is None:
            raise ValueError(f"{variant} backpropagates through every block: it needs the whole network")
        return _global_step(net, rule, x, y, Y, masks, update, weights)
    return _local_step(net, rule, x, y, Y, masks, update, weights, w_out)


def _local_step(net, rule, x, y, Y, masks, update, weights, w_out) -> StepResult:
    running, block_stats = [], []
    for j, spec in enumerate(net.specs):
        p, f = net.params[j], net.fixed[j]
        h, x, cache, new_running = block_forward(x, p, net.running[j], spec, True, masks[j], net.slope)
        # h's buffer may take δh unless it is also the block's output (no dropout, no pool: x is h)
        dh, head_grads, stats = local_error(rule, h, y, Y, p, f, spec, weights, overwrite_h=x is not h)
        del h  # the block's own backward needs only its cache (memory)
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
    caches, hs, running = [], [], []
    for j, spec in enumerate(net.specs):
        h, x, cache, new_running = block_forward(x, net.params[j], net.running[j], spec, True, masks[j], net.slope)
        caches.append(cache)
        hs.append(h if rule.heads else None)  # plain backprop needs only the caches
        running.append(new_running)
    logits, out_cache = output_layer_forward(x, net.out)
    loss, dlogits = ops.softmax_cross_entropy(logits, y)
    do, gW, gb = ops.dense_backward(dlogits, out_cache)  # error into the last block, through W_out^T
    update(-1, {"W": gW, "b": gb})
    block_stats: list = [None] * len(net.specs)
    for j in reversed(range(len(net.specs))):
        spec = net.specs[j]
        dh = output_backward(do, caches[j])
        head_grads, stats = {}, {}
        if rule.heads:  # glob+sim: the block's local error joins the global one
            dh_local, head_grads, stats = local_error(rule, hs[j], y, Y, net.params[j], net.fixed[j], spec, weights)
            dh = dh + dh_local
        # dh is a fresh array (or the fresh δx from the block above): handed over, as the cache is
        do, grads = block_backward(dh, caches[j], spec, need_dx=j > 0, overwrite_dh=True)
        grads.update(head_grads)
        update(net.first + j, grads)
        block_stats[j] = stats
        caches[j] = hs[j] = None
    return StepResult(x, running, loss, ops.count_correct(logits, y), block_stats)


# ------------------------------------------------------------------------------ evaluation
def evaluate_batch(net: Blocks, variant: str, x, y) -> StepResult:
    """Eval mode (running BN statistics, no dropout): each block's local losses and local predictor's
    correct count (no gradients), and, with the output layer, its loss and correct count. ``running``
    is the unchanged statistics."""
    rule = get_rule(variant)
    Y = one_hot(y, net.num_classes, x.dtype)
    weights = {head.name: 1.0 for head in rule.heads}
    block_stats = []
    for j, spec in enumerate(net.specs):
        h, x, _, _ = block_forward(x, net.params[j], net.running[j], spec, False, None, net.slope)
        stats = {}
        if rule.heads:
            _, _, stats = local_error(rule, h, y, Y, net.params[j], net.fixed[j], spec, weights, backward=False)
        block_stats.append(stats)
    if net.out is None:
        return StepResult(x, net.running, None, None, block_stats)
    logits, _ = output_layer_forward(x, net.out)
    loss, _ = ops.softmax_cross_entropy(logits, y)
    return StepResult(x, net.running, loss, ops.count_correct(logits, y), block_stats)


def describe_rules(names: Sequence[str] | None = None) -> str:
    """One line per rule: its name, what it does, its reference (for --list-variants)."""
    names = list(names or VARIANTS)
    width = max(len(n) for n in names)
    return "\n".join(f"{n:{width}s}  {RULES[n].summary} [{RULES[n].reference}]" for n in names)
