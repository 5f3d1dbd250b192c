"""The wider family of rules on the same engine: feedback alignment, sign symmetry, Kolen-Pollack,
direct feedback alignment, direct random target projection, local losses without detach, and the
authors' unsupervised local losses.

- With B_l := W_l (FA, Kolen-Pollack) or W_l ∈ {±1} (sign symmetry) the update is backprop's.
- DFA's and DRTP's updates equal their closed forms (an mlp without batch norm, float64).
- Kolen-Pollack's B_l turns towards W_l over a short training (the logged angle falls).
- No op carries an error through a forward weight in fa, kolen-pollack, dfa, drtp; sign symmetry
  carries it through sign(W) only.
- glob+pred, glob+predsim and the unsupervised losses follow their gradients (finite differences).
- Every new rule learns on the embedded data, and --list-variants lists every rule with its reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_rules import K, assert_grad, block_inputs, make_net, record_step, tiny_spec

from bioplaus import ops
from bioplaus.backend import NUMPY
from bioplaus.blocks import output_layer_forward
from bioplaus.config import Config
from bioplaus.heads import Targets
from bioplaus.log import read_run
from bioplaus.models import BlockSpec, NetSpec
from bioplaus.rules import RULES, compose, init_network, local_error, one_hot
from bioplaus.runner import run
from tests.helpers import block_forward, numerical_grad, rel_error, the_tap

NEW = ["fa", "sign-symmetry", "kolen-pollack", "dfa", "drtp", "glob+pred", "glob+predsim"]


def _same(a: dict, b: dict, tol=1e-10):
    assert a.keys() == b.keys()
    for i, mine in a.items():
        assert mine.keys() == b[i].keys(), i
        for key, g in mine.items():
            assert rel_error(g, b[i][key]) < tol or np.max(np.abs(g - b[i][key])) < 1e-12, (i, key)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", ["fa", "kolen-pollack"])
def test_feedback_matrix_equal_to_W_is_backprop(variant, kind):
    cfg, net, x, y = make_net(variant, kind)
    for state in (*net.blocks, net.out):
        state.feedback["B"] = state.params["W"].copy()
    _same(record_step(net, cfg, x, y), record_step(net, cfg, x, y, variant="glob"))
    for block in net.blocks:  # and with the random B it is not
        block.feedback["B"] = np.random.default_rng(1).normal(size=block.params["W"].shape)
    ours, theirs = record_step(net, cfg, x, y), record_step(net, cfg, x, y, variant="glob")
    assert rel_error(ours[0]["W"], theirs[0]["W"]) > 1e-3


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_sign_symmetry_with_unit_weights_is_backprop(kind):
    cfg, net, x, y = make_net("sign-symmetry", kind)
    for p in [b.params for b in (*net.blocks, net.out)]:
        p["W"][...] = np.where(p["W"] >= 0, 1.0, -1.0) * 0.5  # |W| equal everywhere: sign(W) = 2 W
    ours, theirs = record_step(net, cfg, x, y), record_step(net, cfg, x, y, variant="glob")
    # the errors below the top are scaled by 2 per layer crossed; the top block and the output layer agree
    last = len(net.specs) - 1
    assert rel_error(ours[-1]["W"], theirs[-1]["W"]) < 1e-12
    assert rel_error(ours[last]["W"], 2 * theirs[last]["W"]) < 1e-10
    for p in [b.params for b in (*net.blocks, net.out)]:
        p["W"][...] = np.sign(p["W"])  # W ∈ {±1}: sign(W) = W exactly
    _same(record_step(net, cfg, x, y), record_step(net, cfg, x, y, variant="glob"))


def _plain_mlp(variant: str):
    """An mlp without batch norm (closed forms stay short): 8 -> 7 -> 6 -> K."""
    blocks = (BlockSpec("fc1", "dense", 8, 7, dec_features=7), BlockSpec("fc2", "dense", 7, 6, dec_features=6))
    spec = NetSpec("mlp", (2, 2, 2), K, blocks, 6, False)
    cfg = Config(variant=variant, nonlin="leakyrelu", seed=2).resolve()
    net = init_network(spec, cfg, NUMPY, dtype=np.float64)
    rng = np.random.default_rng(5)
    for state in (*net.blocks, net.out):
        for v in state.params.values():
            v[...] = rng.normal(size=v.shape) * 0.5
    x = rng.normal(size=(6, 2, 2, 2))
    y = np.array([0, 1, 2, 0, 1, 1])
    return cfg, net, x, y


@pytest.mark.parametrize("variant", ["dfa", "drtp"])
def test_direct_rules_equal_their_closed_forms(variant):
    cfg, net, x, y = _plain_mlp(variant)
    grads = record_step(net, cfg, x, y)
    slope = net.slope
    phi = lambda a: np.where(a > 0, a, slope * a)
    dphi = lambda a: np.where(a > 0, 1.0, slope)
    h0 = x.reshape(6, -1)
    acts, inputs = [], []
    for block in net.blocks:
        inputs.append(h0)
        a = h0 @ block.params["W"].T + block.params["b"]
        acts.append(a)
        h0 = phi(a)
    logits = h0 @ net.out.params["W"].T + net.out.params["b"]
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    Y = np.eye(K)[y]
    e = (soft - Y) / 6
    signal = e if variant == "dfa" else Y / 6
    for j, block in enumerate(net.blocks):
        delta = (signal @ block.feedback["D"]) * dphi(acts[j])  # δa_l = (s D_l) ⊙ φ'(a_l)
        assert rel_error(grads[j]["W"], delta.T @ inputs[j]) < 1e-12, j
        assert rel_error(grads[j]["b"], delta.sum(0)) < 1e-12, j
    assert rel_error(grads[-1]["W"], e.T @ h0) < 1e-12  # the output layer: its exact gradient


def test_kolen_pollack_feedback_turns_towards_W(tmp_path):
    cfg = Config(variant="kolen-pollack", num_layers=2, num_hidden=64, epochs=3, device="cpu",
                 weight_decay=1e-3).resolve()
    from bioplaus.models import build_spec
    from bioplaus.rules import alignment

    net = init_network(build_spec(cfg, (1, 28, 28), 10), cfg, NUMPY)
    start = float(alignment(compose(cfg), net.blocks[0], first=True)[("fc1", "fb_angle")])
    assert 85 < start < 95  # two random matrices: nearly orthogonal
    result = run(cfg, out=str(tmp_path / "kp.h5"))
    angles = read_run(result.path).layers["fc1"]["fb_angle"]
    assert angles[0] < start - 2 and np.all(np.diff(angles) < 0), angles  # falls, epoch after epoch
    from bioplaus.checkpoint import load_checkpoint

    state, _ = load_checkpoint(result.path + ".ckpt.npz")
    assert not np.array_equal(state["blocks/fc1/feedback/B"], NUMPY.to_host(net.blocks[0].feedback["B"]))
    fa_cfg = cfg.replace(variant="fa", epochs=1)
    fa = run(fa_cfg, out=str(tmp_path / "fa.h5"))
    fa_net = init_network(build_spec(fa_cfg, (1, 28, 28), 10), fa_cfg, NUMPY)
    state, _ = load_checkpoint(fa.path + ".ckpt.npz")
    np.testing.assert_array_equal(state["blocks/fc1/feedback/B"], fa_net.blocks[0].feedback["B"])  # FA's B stays fixed


@pytest.mark.parametrize("variant", ["fa", "kolen-pollack", "dfa", "drtp", "sign-symmetry"])
def test_no_error_through_a_forward_weight(variant, monkeypatch):
    cfg, net, x, y = make_net(variant, "conv")
    forward = {id(b.params["W"]) for b in (*net.blocks, net.out)}
    calls = []
    for name in ("dense_backward", "conv2d_backward"):
        real = getattr(ops, name)

        def spy(dout, cache, need_dx=True, _real=real, _name=name, **kwargs):
            calls.append((_name, need_dx))
            return _real(dout, cache, need_dx=need_dx, **kwargs)

        monkeypatch.setattr(ops, name, spy)
    carried = []
    real_input_grad = ops.conv2d_input_grad

    def spy_input_grad(dout, W, *args):
        carried.append(id(W))
        return real_input_grad(dout, W, *args)

    monkeypatch.setattr(ops, "conv2d_input_grad", spy_input_grad)
    record_step(net, cfg, x, y)
    assert calls and all(need_dx is False for _, need_dx in calls), calls
    assert not forward & set(carried)  # never W itself (sign symmetry: a new array, sign(W))
    if variant in ("fa", "kolen-pollack", "sign-symmetry"):
        assert carried  # the conv's error did travel, through the stand-in


def _total_local_loss(net, cfg, i, x_i, y):
    rule = compose(cfg)
    weights, _ = rule.weights(cfg.beta)
    block = net.blocks[i]
    h, _, _, _ = block_forward(x_i, block.params, block.running, block.spec, True, None, net.slope)
    t = Targets(x_i, y, one_hot(y, K, h.dtype), net.slope, i == 0, the_tap(block.spec))
    _, _, stats = local_error(rule, h, t, block.params, block.fixed, weights, backward=False)
    return sum(weights[name] * stats[f"loss_{name}"] for name in weights if f"loss_{name}" in stats)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", ["glob+pred", "glob+predsim"])
def test_local_losses_without_detach_follow_the_total_gradient(variant, kind):
    cfg, net, x, y = make_net(variant, kind)
    grads = record_step(net, cfg, x, y)

    def total():
        inputs, last = block_inputs(net, x)
        local = sum(_total_local_loss(net, cfg, i, inputs[i], y) for i in range(len(net.specs)))
        return local + ops.softmax_cross_entropy(output_layer_forward(last, net.out.params)[0], y)[0]  # unscaled

    for i, block in enumerate(net.blocks):
        for key, value in block.params.items():
            assert_grad(grads[i][key], numerical_grad(total, value), (i, key))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("unsup,variant", [("sim", "predsim"), ("sim", "pred"), ("recon", "predsim"),
                                           ("sim", "sim-bpf"), ("recon", "sim-bpf")])
def test_unsupervised_local_losses_follow_their_gradient(unsup, variant, kind):
    cfg, net, x, y = make_net(variant, kind)
    cfg = cfg.replace(loss_unsup=unsup, alpha=0.3)
    net = init_network(tiny_spec(kind), cfg, NUMPY, dtype=np.float64)  # with the unsupervised heads' weights
    rng = np.random.default_rng(11)
    for block in net.blocks:
        for k, v in block.params.items():
            v[...] = rng.normal(size=v.shape) * (0.5 if k.startswith(("dec", "sim", "rec")) else 0.4)
    grads = record_step(net, cfg, x, y, variant=compose(cfg))
    inputs, _ = block_inputs(net, x)
    if unsup == "recon":
        assert "rec_W" not in net.blocks[0].params and "rec_W" in net.blocks[1].params  # not in the first block
    for i, block in enumerate(net.blocks):
        for key, value in block.params.items():
            f = lambda i=i: _total_local_loss(net, cfg, i, inputs[i], y)
            assert_grad(grads[i][key], numerical_grad(f, value), (i, key))


@pytest.mark.parametrize("variant", NEW)
def test_every_new_rule_learns(variant, tmp_path):
    result = run({"variant": variant, "num_layers": 2, "num_hidden": 64, "epochs": 2, "device": "cpu",
                  "probe_every": 2, "lr_decay_milestones": ()}, out=str(tmp_path / "r.h5"))  # a constant rate
    log = read_run(result.path)
    assert result.status == "completed"
    assert log.epochs["test_error"][-1] < 65, log.epochs["test_error"]  # chance: 90 %
    assert np.isfinite(log.layers["fc1"]["bp_angle"][-1])


@pytest.mark.parametrize("unsup", ["sim", "recon"])
def test_unsupervised_switches_learn_and_log(unsup, tmp_path):
    result = run({"variant": "predsim", "num_layers": 2, "num_hidden": 64, "epochs": 2, "device": "cpu",
                  "loss_unsup": unsup, "alpha": 0.3, "no_similarity_std": unsup == "sim"}, out=str(tmp_path / "u.h5"))
    log = read_run(result.path)
    assert log.epochs["test_error"][-1] < 65
    series = log.layers["fc2"]["train_loss_unsup"]
    assert np.all(np.isfinite(series)) and series[-1] < series[0]


def test_list_variants_names_every_rule_and_its_reference(capsys):
    from bioplaus.cli import main

    assert main(["--list-variants"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(RULES)
    for name, line in zip(RULES, lines):
        assert line.split()[0] == name and line.rstrip().endswith("]") and RULES[name].reference in line
