"""The learning rules, proved against float64 finite differences of the losses they claim to follow.

- glob: every update is the gradient of the output loss.
- pred / sim / predsim (and the bpf sim part): each block's update is the gradient of its own local
  loss with its input held constant; later blocks cannot change it (locality).
- pred-bpf: with B := dec_W the error at h is the exact gradient; with the real B it is the
  feedback-alignment formula; no bpf path ever carries an error through a forward weight.
- glob+sim: every update is the gradient of the output loss plus all local sim losses.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from bioplaus import ops
from bioplaus.backend import NUMPY
from bioplaus.blocks import output_layer_forward
from bioplaus.config import Config
from bioplaus.heads import Targets
from bioplaus.kinds import draw_masks
from bioplaus.models import BlockSpec, NetSpec
from bioplaus.rules import RULES, init_network, local_error, loss_weights, one_hot, train_step
from tests.helpers import block_forward, numerical_grad, rel_error, the_tap

LOCAL = ["pred", "sim", "predsim", "pred-bpf", "sim-bpf", "predsim-bpf"]
K = 3  # classes


def assert_grad(ours, numeric, what):
    """Relative error below 1e-6, or both zero to rounding (a bias before batch norm has no gradient)."""
    ok = rel_error(ours, numeric) < 1e-6 or np.max(np.abs(ours - numeric)) < 1e-9
    assert ok, (what, rel_error(ours, numeric))


def tiny_spec(kind: str) -> NetSpec:
    if kind == "mlp":
        blocks = (BlockSpec("fc1", "dense", 8, 7, dec_features=7), BlockSpec("fc2", "dense", 7, 6, dec_features=6))
        return NetSpec("mlp", (2, 2, 2), K, blocks, 6, True)
    # conv 2->4 @ 6x6 (+pool), conv 4->5 @ 3x3, dense 45->6; decoder pooling forced by dim_in_decoder 20
    w1, p1, (h1, w1_) = ops.decoder_pool_shape(4, 6, 20)
    w2, p2, (h2, w2_) = ops.decoder_pool_shape(5, 3, 20)
    blocks = (
        BlockSpec("conv1", "conv", 2, 4, 3, 1, 1, 6, True, tuple(w1), tuple(p1), 4 * h1 * w1_),
        BlockSpec("conv2", "conv", 4, 5, 3, 1, 1, 3, False, tuple(w2), tuple(p2), 5 * h2 * w2_),
        BlockSpec("fc1", "dense", 45, 6, dec_features=6),
    )
    return NetSpec("vgg-tiny", (2, 6, 6), K, blocks, 6, True)


def make_net(variant: str, kind: str, seed: int = 0):
    cfg = Config(variant=variant, nonlin="leakyrelu", target_proj_size=5, seed=seed).resolve()
    net = init_network(tiny_spec(kind), cfg, NUMPY, dtype=np.float64)
    rng = np.random.default_rng(seed + 100)
    for block in net.blocks:  # zero-initialised decoders would hide errors: randomise everything
        for k, v in block.params.items():
            v[...] = rng.normal(size=v.shape) * (0.5 if k.startswith(("dec", "sim")) else 0.4)
    for k, v in net.out.params.items():
        v[...] = rng.normal(size=v.shape) * 0.4
    x = rng.normal(size=(6, *tiny_spec(kind).input_shape))
    y = np.array([0, 1, 2, 0, 1, 1])
    return cfg, net, x, y


def record_step(net, cfg, x, y, variant=None):
    grads = {}
    train_step(net, variant or cfg.variant, cfg.beta, x, y, [None] * len(net.specs),
               lambda i, g: grads.__setitem__(i, {k: v.copy() for k, v in g.items()}))
    return grads


def block_inputs(net, x):
    """Each block's input under the current weights (train-mode BN, no dropout)."""
    inputs, h_out = [], x
    for block in net.blocks:
        inputs.append(h_out)
        _, h_out, _, _ = block_forward(h_out, block.params, block.running, block.spec, True, None, net.slope)
    return inputs, h_out


def local_loss(net, cfg, i, x_i, y):
    block = net.blocks[i]
    h, _, _, _ = block_forward(x_i, block.params, block.running, block.spec, True, None, net.slope)
    w_pred, w_sim, _ = loss_weights(cfg.variant, cfg.beta)
    Y = one_hot(y, K, h.dtype)
    _, _, stats = local_error(RULES[cfg.variant], h, Targets(x_i, y, Y, tap=the_tap(block.spec)), block.params,
                              block.fixed, {"pred": w_pred, "sim": w_sim}, backward=False)
    return w_pred * stats.get("loss_pred", 0.0) + w_sim * stats.get("loss_sim", 0.0)


def global_loss(net, x, y, with_sim=False):
    cfg = Config(variant="glob+sim").resolve()
    total, h_out = 0.0, x
    for block in net.blocks:
        h, h_out, _, _ = block_forward(h_out, block.params, block.running, block.spec, True, None, net.slope)
        if with_sim:
            t = Targets(None, y, one_hot(y, K, h.dtype), tap=the_tap(block.spec))
            _, _, st = local_error(RULES[cfg.variant], h, t, block.params, block.fixed, {"sim": 1.0}, backward=False)
            total += st["loss_sim"]
    logits, _ = output_layer_forward(h_out, net.out.params)
    return total + ops.softmax_cross_entropy(logits, y)[0]


def assert_blocks_follow_local_loss(net, cfg, x, y):
    """Every block's recorded update = FD gradient of its own local loss, its input held constant.
    Returns the recorded gradients and the last block's output."""
    grads = record_step(net, cfg, x, y)
    inputs, last = block_inputs(net, x)
    for i, block in enumerate(net.blocks):
        f = partial(local_loss, net, cfg, i, inputs[i], y)
        for key, value in block.params.items():
            assert_grad(grads[i][key], numerical_grad(f, value), (i, key))
    return grads, last


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", ["glob", "glob+sim"])
def test_global_rules_follow_the_gradient(variant, kind):
    cfg, net, x, y = make_net(variant, kind)
    grads = record_step(net, cfg, x, y)
    f = lambda: global_loss(net, x, y, with_sim=variant == "glob+sim")
    for i, block in enumerate(net.blocks):
        for key, value in block.params.items():
            assert_grad(grads[i][key], numerical_grad(f, value), (i, key))
    for key, value in net.out.params.items():
        assert_grad(grads[-1][key], numerical_grad(f, value), key)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", ["pred", "sim", "predsim", "sim-bpf"])
def test_local_rules_follow_their_own_loss(variant, kind):
    cfg, net, x, y = make_net(variant, kind)
    grads, last = assert_blocks_follow_local_loss(net, cfg, x, y)
    # the output layer learns from the (scaled) output loss on a constant input
    w_out = loss_weights(variant, cfg.beta)[2]
    g = lambda: w_out * ops.softmax_cross_entropy(output_layer_forward(last, net.out.params)[0], y)[0]
    for key, value in net.out.params.items():
        assert_grad(grads[-1][key], numerical_grad(g, value), key)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", ["pred-bpf", "predsim-bpf"])
def test_feedback_alignment_with_B_equal_to_the_decoder_is_backprop(variant, kind):
    cfg, net, x, y = make_net(variant, kind)
    for block in net.blocks:
        block.fixed["B"] = block.params["dec_W"].copy()  # B := dec_W turns feedback alignment into the exact gradient
    assert_blocks_follow_local_loss(net, cfg, x, y)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_feedback_alignment_error_is_the_fa_formula(kind):
    _, net, x, y = make_net("pred-bpf", kind)
    inputs, _ = block_inputs(net, x)
    for i, block in enumerate(net.blocks):
        spec, p, f = block.spec, block.params, block.fixed
        h, _, _, _ = block_forward(inputs[i], p, block.running, spec, True, None, net.slope)
        dh, grads, _ = local_error(RULES["pred-bpf"], h, Targets(None, y, one_hot(y, K, h.dtype), tap=the_tap(spec)),
                                   p, f, {"pred": 1.0})
        # independent formula: pooled h -> logits; δ = (σ(logits) - t) / (N T); δh = pool^T(δ B)
        pooled, pc = (ops.avgpool2d_forward(h, spec.dec_window, spec.dec_pad) if spec.kind.name == "conv"
                      else (h, None))
        logits = pooled.reshape(len(h), -1) @ p["dec_W"].T + p["dec_b"]
        t = (one_hot(y, K, h.dtype) @ f["P"] > 0).astype(float)
        delta = (1 / (1 + np.exp(-logits)) - t) / t.size
        expect = (delta @ f["B"]).reshape(pooled.shape)
        if pc is not None:
            expect = ops.avgpool2d_backward(expect, pc)
        assert rel_error(dh, expect) < 1e-12
        assert rel_error(grads["dec_W"], delta.T @ pooled.reshape(len(h), -1)) < 1e-12
        # and it is *not* the exact gradient (B is not dec_W)
        assert rel_error(dh, ops.avgpool2d_backward((delta @ p["dec_W"]).reshape(pooled.shape), pc)
                         if pc is not None else delta @ p["dec_W"]) > 1e-3


@pytest.mark.parametrize("variant", LOCAL)
def test_locality_later_blocks_cannot_change_an_earlier_update(variant):
    cfg, net, x, y = make_net(variant, "conv")
    before = record_step(net, cfg, x, y)
    for key in net.blocks[1].params:
        net.blocks[1].params[key] += 0.3
    net.out.params["W"] += 0.3
    after = record_step(net, cfg, x, y)
    for key in before[0]:
        assert np.array_equal(before[0][key], after[0][key]), key
    assert not np.array_equal(before[1]["W"], after[1]["W"])


@pytest.mark.parametrize("variant", ["pred-bpf", "sim-bpf", "predsim-bpf"])
def test_bpf_never_sends_an_error_through_a_forward_weight(variant, monkeypatch):
    cfg, net, x, y = make_net(variant, "conv")
    calls = []
    for name in ("dense_backward", "conv2d_backward"):
        real = getattr(ops, name)

        def spy(dout, cache, need_dx=True, _real=real, _name=name, **kwargs):
            calls.append((_name, need_dx))
            return _real(dout, cache, need_dx=need_dx, **kwargs)

        monkeypatch.setattr(ops, name, spy)
    record_step(net, cfg, x, y)
    assert calls, "the spy saw no backward call"
    assert all(need_dx is False for _, need_dx in calls), calls


@pytest.mark.parametrize("variant", ["pred", "sim", "predsim", "glob"])
def test_non_bpf_rules_do_use_transposed_weights(variant, monkeypatch):
    """The spy above can fail: the non-bpf rules carry errors through some forward weight."""
    cfg, net, x, y = make_net(variant, "mlp")
    calls = []
    real = ops.dense_backward
    monkeypatch.setattr(ops, "dense_backward",
                        lambda d, c, need_dx=True: calls.append(need_dx) or real(d, c, need_dx=need_dx))
    record_step(net, cfg, x, y)
    assert any(calls)


def test_fixed_matrices_are_not_parameters_and_stay_bit_identical():
    from bioplaus.optim import make_optimizer

    cfg, net, x, y = make_net("predsim-bpf", "conv")
    assert all({"B", "P"} <= set(b.fixed) for b in net.blocks)
    assert all(not ({"B", "P"} & set(b.params)) for b in net.blocks)
    fixed_before = [{k: v.copy() for k, v in b.fixed.items()} for b in net.blocks]
    opt = make_optimizer("adam")
    for state in (*net.blocks, net.out):
        state.opt = {k: opt.init_state(v) for k, v in state.params.items()}
    w_before = net.blocks[0].params["W"].copy()

    def update(i, grads):
        assert not ({"B", "P"} & set(grads))
        state = net.out if i < 0 else net.blocks[i]
        for k, g in grads.items():
            opt.step(state.params[k], g, state.opt[k], 1e-2)

    for _ in range(5):
        for block, running in zip(net.blocks, train_step(net, cfg.variant, cfg.beta, x, y, [None] * 3, update).running):
            block.running = running
    assert not np.array_equal(net.blocks[0].params["W"], w_before)
    for b, g in zip(net.blocks, fixed_before):
        for k in g:
            assert np.array_equal(b.fixed[k], g[k]) and b.fixed[k].tobytes() == g[k].tobytes()


def test_heads_carried_by_each_variant():
    expect = {"glob": set(), "glob+sim": {"sim_W"}, "pred": {"dec_W", "dec_b"}, "sim": {"sim_W"},
              "predsim": {"dec_W", "dec_b", "sim_W"}, "pred-bpf": {"dec_W", "dec_b"}, "sim-bpf": set(),
              "predsim-bpf": {"dec_W", "dec_b"}}
    for variant, heads in expect.items():
        _, net, _, _ = make_net(variant, "conv")
        assert set(net.blocks[0].params) - {"W", "b", "gamma", "beta"} == heads, variant


def test_initialisation_as_the_authors():
    cfg = Config(variant="predsim", seed=3).resolve()
    net = init_network(tiny_spec("mlp"), cfg, NUMPY)
    p = net.blocks[0].params
    assert p["W"].dtype == np.float32
    assert np.all(p["dec_W"] == 0) and np.all(net.out.params["W"] == 0)
    assert np.all(p["gamma"] == 1) and np.all(p["beta"] == 0)
    assert np.abs(p["W"]).max() <= 1 / np.sqrt(8)
    glob = init_network(tiny_spec("mlp"), Config(variant="glob", seed=3).resolve(), NUMPY)
    assert np.any(glob.out.params["W"] != 0)
    bpf = init_network(tiny_spec("mlp"), Config(variant="pred-bpf", seed=3).resolve(), NUMPY)
    assert np.all(bpf.blocks[0].params["dec_b"] == 0)
    assert 0 < np.abs(bpf.blocks[0].fixed["B"]).max() <= 1 / np.sqrt(7)
    assert 0 < np.abs(bpf.blocks[0].fixed["P"]).max() <= 1 / np.sqrt(K)


def make_masks(net, n, p=0.3, seed=7):
    rng = np.random.default_rng(seed)
    return [draw_masks(spec, rng, p, n, np.float64) for spec in net.specs]


def test_glob_with_fixed_dropout_masks_follows_the_gradient():
    """Dropout on (whole channels in conv blocks, pooled after): backprop is still the exact gradient."""
    cfg, net, x, y = make_net("glob", "conv")
    masks = make_masks(net, len(x))
    grads = {}
    train_step(net, "glob", cfg.beta, x, y, masks, lambda i, g: grads.__setitem__(i, {k: v.copy() for k, v in g.items()}))

    def loss():
        h_out = x
        for block, masks_i in zip(net.blocks, masks):
            _, h_out, _, _ = block_forward(h_out, block.params, block.running, block.spec, True, masks_i, net.slope)
        return ops.softmax_cross_entropy(output_layer_forward(h_out, net.out.params)[0], y)[0]

    for i, block in enumerate(net.blocks):
        for key, value in block.params.items():
            assert_grad(grads[i][key], numerical_grad(loss, value), (i, key))


def test_block_output_is_pool_of_dropout():
    """o = maxpool(dropout(h)) whatever order the block computes it in (DESIGN §1)."""
    _, net, x, _ = make_net("glob", "conv")
    spec = net.specs[0]
    assert spec.pool_after
    (mask,) = make_masks(net, len(x), p=0.5)[0]
    h, o, _, _ = block_forward(x, net.blocks[0].params, net.blocks[0].running, spec, True, mask, net.slope)
    dropped, _ = ops.dropout_forward(h, mask)
    expect, _ = ops.maxpool2d_forward(dropped, 2)
    assert np.array_equal(o, expect)


@pytest.mark.parametrize("variant", sorted(RULES))
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_a_float32_step_stays_float32(variant, kind, monkeypatch):
    """No accidental float64: every op's output array, every gradient and every loss of a float32
    step is float32 (with dropout, as in training)."""
    from bioplaus.backend import NUMPY as backend

    cfg = Config(variant=variant, nonlin="leakyrelu", target_proj_size=5, dropout=0.3).resolve()
    net = init_network(tiny_spec(kind), cfg, backend, dtype=np.float32)
    seen = []

    def arrays(value):
        if isinstance(value, np.ndarray):
            yield value
        elif isinstance(value, (tuple, list)):
            for v in value:
                yield from arrays(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from arrays(v)

    for name in ops.__all__:
        real = getattr(ops, name)
        if not callable(real):
            continue

        def spy(*args, _real=real, _name=name, **kwargs):
            out = _real(*args, **kwargs)
            for a in arrays(out):  # outputs and caches
                if a.dtype.kind == "f":
                    seen.append((_name, a.dtype))
            return out

        monkeypatch.setattr(ops, name, spy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, *tiny_spec(kind).input_shape)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 1])
    masks = [draw_masks(b, backend.rng(0, "dropout", i), 0.3, 6, np.float32) for i, b in enumerate(net.specs)]
    grads = []
    step = train_step(net, variant, cfg.beta, x, y, masks, lambda i, g: grads.append(g))
    loss, stats = step.loss, step.stats
    assert seen, "the spy saw no op"
    assert all(dtype == np.float32 for _, dtype in seen), sorted({n for n, d in seen if d != np.float32})
    assert grads and all(g.dtype == np.float32 for gs in grads for g in gs.values())
    assert loss.dtype == np.float32
    assert all(v.dtype == np.float32 for layer in stats.values() for k, v in layer.items() if k.startswith("loss"))
