"""Learning rules: where each block's error signal δh comes from. The whole difference between
backprop, local learning and the backprop-free versions is in this file.

Nøkland & Eidnes (2019), §3. Every hidden block computes ``h = φ(BN(W*x + b))`` and updates
``W ← opt(W, ∂/∂W)`` from an error ``δh`` at ``h``; given ``δh`` its own backward is the same for
every rule (:func:`bioplaus.blocks.block_backward`). The rules differ only in ``δh``::

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
stream. The output layer always learns from the output cross-entropy on the last block's output
(scaled by 1−β in the predsim variants, as the authors did); in local rules that output is a
constant too.

Lines that are *not* gradients are marked ``# NOT A GRADIENT``. In the bpf rules no op ever
carries an error through a forward weight (every dense/conv backward runs with
``need_dx=False``): the only backward left is inside a block, through its own φ and BN to its
own W. ``tests/test_rules.py`` checks this by spying on the ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bioplaus import ops
from bioplaus.backend import get_array_module
from bioplaus.blocks import Network, block_backward, block_forward, output_backward, output_layer_forward
from bioplaus.models import BlockSpec


@dataclass(frozen=True)
class Rule:
    """What a variant is made of."""

    pred: str | None = None  # None | "exact" (error through dec_W^T) | "feedback" (through fixed B)
    sim: str | None = None  # None | "learned" (S of a learned conv/dense of h) | "direct" (S of pooled h)
    global_error: bool = False  # errors cross block boundaries (backprop)


RULES: dict[str, Rule] = {
    "glob": Rule(global_error=True),
    "glob+sim": Rule(sim="learned", global_error=True),
    "pred": Rule(pred="exact"),
    "sim": Rule(sim="learned"),
    "predsim": Rule(pred="exact", sim="learned"),
    "pred-bpf": Rule(pred="feedback"),
    "sim-bpf": Rule(sim="direct"),
    "predsim-bpf": Rule(pred="feedback", sim="direct"),
}

# Update callback: update(layer_index, grads) with layer_index = block index, or -1 for the output layer.
Update = Callable[[int, dict], None]


def loss_weights(variant: str, beta: float) -> tuple[float, float, float]:
    """(weight of pred, weight of sim, weight of the output cross-entropy) for a variant."""
    if variant in ("predsim", "predsim-bpf"):
        return 1.0 - beta, beta, 1.0 - beta
    return 1.0, 1.0, 1.0


def one_hot(y, num_classes: int, dtype):
    xp = get_array_module(y)
    return (y[:, None] == xp.arange(num_classes)[None, :]).astype(dtype)  # (N, K)


def bpf_codes(P):
    """Binary label codes of the pred-bpf head: row c is 1[e_c·P > 0]. (K, T)"""
    return (P > 0).astype(P.dtype)


# ------------------------------------------------------------------------------ local heads
def local_error(rule: Rule, h, y, Y, p: dict, f: dict, spec: BlockSpec, w_pred: float, w_sim: float,
                backward: bool = True, overwrite_h: bool = False):
    """The block's local losses and, when ``backward``, its error δh and its head gradients.

    h: the block's output before dropout, (N, D) or (N, C, H, W); y: labels (N,); Y: one-hot (N, K).
    Returns (δh or None, head_grads, stats) with stats holding 0-d device arrays.
    ``overwrite_h=True``: the caller needs h no more; once the heads have read it, δh may be written
    in its buffer (peak memory).
    """
    xp = get_array_module(h)
    dh = None
    grads: dict = {}
    stats: dict = {}
    # pred and sim-bpf read h average-pooled until C*h*w <= dim_in_decoder (conv blocks only)
    pooled, pool_cache = h, None
    if spec.kind == "conv" and spec.dec_window != (1, 1) and (rule.pred or rule.sim == "direct"):
        pooled, pool_cache = ops.avgpool2d_forward(h, spec.dec_window, spec.dec_pad)
    d_pooled = None

    if rule.pred is not None:
        flat = pooled.reshape(pooled.shape[0], -1)  # (N, D_dec)
        logits, dec_cache = ops.dense_forward(flat, p["dec_W"], p["dec_b"])  # (N, K) or (N, T)
        if rule.pred == "exact":
            loss, dlogits = ops.softmax_cross_entropy(logits, y)
            stats["correct_pred"] = ops.count_correct(logits, y)
        else:
            t = (Y @ f["P"] > 0).astype(h.dtype)  # (N, T) NOT A GRADIENT: random projection of the labels
            loss, dlogits = ops.sigmoid_bce_with_logits(logits, t)
            stats["correct_pred"] = _count_code_correct(logits, y, f["P"])
        stats["loss_pred"] = loss
        if backward:
            dlogits = w_pred * dlogits
            if rule.pred == "exact":
                dflat, grads["dec_W"], grads["dec_b"] = ops.dense_backward(dlogits, dec_cache)  # through dec_W^T
            else:
                _, grads["dec_W"], grads["dec_b"] = ops.dense_backward(dlogits, dec_cache, need_dx=False)
                dflat = dlogits @ f["B"]  # (N, D_dec) NOT A GRADIENT: feedback alignment, B instead of dec_W
            d_pooled = dflat.reshape(pooled.shape)

    if rule.sim is not None:
        if rule.sim == "learned":
            if spec.kind == "conv":
                z, proj_cache = ops.conv2d_forward(h, p["sim_W"], None, 1, 1)  # (N, C, H, W)
            else:
                z, proj_cache = ops.dense_forward(h, p["sim_W"], None)  # (N, D)
            target = ops.label_similarity(Y)  # (N, N)
        else:
            z = pooled  # no learned layer between h and S
            target = ops.label_similarity(Y @ f["P"])  # (N, N) NOT A GRADIENT: random projection of the labels
        # memory: the learned z is this head's own array, so S's cache may centre it in place
        S, s_cache = ops.similarity_forward(z, overwrite=rule.sim == "learned")  # (N, N)
        del z  # its cache keeps what S's backward needs (memory: z is a full feature map)
        loss, dS = ops.mse(S, target)
        stats["loss_sim"] = loss
        if backward:
            dz = ops.similarity_backward(w_sim * dS, s_cache, overwrite=True)  # s_cache is used up here
            del s_cache
            if rule.sim == "learned":
                if spec.kind == "conv":  # dz is ours: the conv may write dh into its buffer (memory)
                    dh, grads["sim_W"], _ = ops.conv2d_backward(dz, proj_cache, overwrite_dout=True)
                else:
                    dh, grads["sim_W"], _ = ops.dense_backward(dz, proj_cache)  # through sim_W^T (one-step backprop)
            else:
                d_pooled = dz if d_pooled is None else d_pooled + dz
            del dz

    if backward and d_pooled is not None:
        if pool_cache is None:
            dh = d_pooled if dh is None else dh + d_pooled
        elif dh is not None:  # in place: dh is the sim path's own fresh array (memory)
            dh = ops.avgpool2d_backward(d_pooled, pool_cache, add_to=dh)
        else:  # h was read only through the pooled copy: its buffer may take δh (memory)
            dh = ops.avgpool2d_backward(d_pooled, pool_cache, out=h if overwrite_h else None)
    if dh is None and backward:
        dh = xp.zeros_like(h)
    return dh, grads, stats


def _count_code_correct(logits, y, P):
    """Local predictor of a pred-bpf head: the class whose label code is most likely under σ(logits).

    log p(code_c) = Σ_t [c_t log σ(l_t) + (1 − c_t) log(1 − σ(l_t))] = l·c + Σ_t log(1 − σ(l_t)),
    since log σ(l) − log(1 − σ(l)) = l; the last sum is the same for every class, so the argmax
    over classes is that of ``logits @ codesᵀ``.
    """
    codes = bpf_codes(P)  # (K, T)
    return ops.count_correct(logits @ codes.T, y)  # (N, K) scores up to a per-row constant


# ------------------------------------------------------------------------------ training steps
def train_step(net: Network, variant: str, beta: float, x, y, masks: list, update: Update):
    """One mini-batch under ``variant``. Calls ``update(i, grads)`` as soon as layer i's gradients
    are ready (immediately after its own backward in local rules), and returns
    (new running statistics per block, output loss, output correct count, per-block stats).
    """
    rule = RULES[variant]
    w_pred, w_sim, w_out = loss_weights(variant, beta)
    Y = one_hot(y, net.spec.num_classes, x.dtype)
    if rule.global_error:
        return _global_step(net, rule, x, y, Y, masks, update, w_pred, w_sim)
    return _local_step(net, rule, x, y, Y, masks, update, w_pred, w_sim, w_out)


def _local_step(net, rule, x, y, Y, masks, update, w_pred, w_sim, w_out):
    running, block_stats = [], []
    for i, spec in enumerate(net.spec.blocks):
        p, f = net.params[i], net.fixed[i]
        h, x, cache, new_running = block_forward(x, p, net.running[i], spec, True, masks[i], net.slope)
        # h's buffer may take δh unless it is also the block's output (no dropout, no pool: x is h)
        dh, head_grads, stats = local_error(rule, h, y, Y, p, f, spec, w_pred, w_sim, overwrite_h=x is not h)
        del h  # the block's own backward needs only its cache (memory)
        # the input is a constant: no error leaves; dh is ours, its buffer may be reused (memory)
        _, grads = block_backward(dh, cache, spec, need_dx=False, overwrite_dh=True)
        grads.update(head_grads)
        update(i, grads)
        running.append(new_running)
        block_stats.append(stats)
        del cache, dh  # the block's activations are free once it has updated
    logits, out_cache = output_layer_forward(x, net.out)  # x: last block's output, a constant here
    loss, dlogits = ops.softmax_cross_entropy(logits, y)
    _, gW, gb = ops.dense_backward(w_out * dlogits, out_cache, need_dx=False)
    update(-1, {"W": gW, "b": gb})
    return running, loss, ops.count_correct(logits, y), block_stats


def _global_step(net, rule, x, y, Y, masks, update, w_pred, w_sim):
    caches, hs, running = [], [], []
    for i, spec in enumerate(net.spec.blocks):
        h, x, cache, new_running = block_forward(x, net.params[i], net.running[i], spec, True, masks[i],
                                                 net.slope)
        caches.append(cache)
        hs.append(h if rule.sim is not None else None)  # plain backprop needs only the caches
        running.append(new_running)
    logits, out_cache = output_layer_forward(x, net.out)
    loss, dlogits = ops.softmax_cross_entropy(logits, y)
    do, gW, gb = ops.dense_backward(dlogits, out_cache)  # error into the last block, through W_out^T
    update(-1, {"W": gW, "b": gb})
    block_stats: list = [None] * len(net.spec.blocks)
    for i in reversed(range(len(net.spec.blocks))):
        spec = net.spec.blocks[i]
        dh = output_backward(do, caches[i])
        head_grads, stats = {}, {}
        if rule.sim is not None:  # glob+sim: the block's local sim error joins the global one
            dh_local, head_grads, stats = local_error(rule, hs[i], y, Y, net.params[i], net.fixed[i], spec,
                                                      w_pred, w_sim)
            dh = dh + dh_local
        # dh is a fresh array (or the fresh δx from the block above): handed over, as the cache is
        do, grads = block_backward(dh, caches[i], spec, need_dx=i > 0, overwrite_dh=True)
        grads.update(head_grads)
        update(i, grads)
        block_stats[i] = stats
        caches[i] = hs[i] = None
    return running, loss, ops.count_correct(logits, y), block_stats


# ------------------------------------------------------------------------------ evaluation
def evaluate_batch(net: Network, variant: str, x, y):
    """Eval mode (running BN statistics, no dropout): output loss and correct count, and each
    block's local losses and local predictor correct count (no gradients)."""
    rule = RULES[variant]
    Y = one_hot(y, net.spec.num_classes, x.dtype)
    block_stats = []
    for i, spec in enumerate(net.spec.blocks):
        h, x, _, _ = block_forward(x, net.params[i], net.running[i], spec, False, None, net.slope)
        if rule.pred or rule.sim:
            _, _, stats = local_error(rule, h, y, Y, net.params[i], net.fixed[i], spec, 1.0, 1.0,
                                      backward=False)
        else:
            stats = {}
        block_stats.append(stats)
    logits, _ = output_layer_forward(x, net.out)
    loss, _ = ops.softmax_cross_entropy(logits, y)
    return loss, ops.count_correct(logits, y), block_stats
