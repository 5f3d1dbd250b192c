"""Feedback alignment, DFA and DRTP against independent PyTorch references (float64; skipped without torch).

- fa: every layer (conv, dense, output) is a custom autograd function whose backward sends the error to
  its input through a fixed B instead of W (conv: the input gradient of a convolution with kernel B),
  and one ``backward()`` of the output loss runs through the whole network.
- dfa: each block's input detached; the surrogate ``sum(o_l * (e D_l))`` with the output error e held
  constant gives every block the update of δo_l = e D_l (Nøkland 2016).
- drtp: the same with δo_l = Y D_l / N, the one-hot target's projection (Frenkel et al. 2021).
Every gradient bioplaus hands to its optimizer must match torch's ``.grad``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_rules import make_net
from tests.test_rules_torch import assert_close, bioplaus_step, block, torch_arrays

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(autouse=True, scope="module")
def torch_float64_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


class LinearFA(torch.autograd.Function):
    """y = x Wᵀ + b; the error to x goes through B."""

    @staticmethod
    def forward(ctx, x, W, b, B):
        ctx.save_for_backward(x, B)
        return x @ W.T + b

    @staticmethod
    def backward(ctx, g):
        x, B = ctx.saved_tensors
        return g @ B, g.T @ x, g.sum(0), None


class Conv2dFA(torch.autograd.Function):
    """a = conv(x, W) + b; the error to x is the input gradient of a convolution with kernel B."""

    @staticmethod
    def forward(ctx, x, W, b, B, stride, pad):
        ctx.save_for_backward(x, W, B)
        ctx.stride, ctx.pad = stride, pad
        return F.conv2d(x, W, b, stride=stride, padding=pad)

    @staticmethod
    def backward(ctx, g):
        x, W, B = ctx.saved_tensors
        dx = torch.nn.grad.conv2d_input(x.shape, B, g, stride=ctx.stride, padding=ctx.pad)
        dW = torch.nn.grad.conv2d_weight(x, W.shape, g, stride=ctx.stride, padding=ctx.pad)
        return dx, dW, g.sum((0, 2, 3)), None, None, None


def fa_block(x, p, B, spec, slope):
    if spec.kind.name == "dense":
        a = LinearFA.apply(x.reshape(x.size(0), -1), p["W"], p["b"], B)
    else:
        a = Conv2dFA.apply(x, p["W"], p["b"], B, spec.stride, spec.pad)
    h = F.leaky_relu(F.batch_norm(a, None, None, p["gamma"], p["beta"], training=True, eps=1e-5), slope)
    return F.max_pool2d(h, 2) if spec.pool_after else h


def _grads(net, variant, cfg, x, y):
    grads = {}
    bioplaus_step(net, variant, cfg.beta, x, y, lambda i, g: grads.__setitem__(i, {k: v.copy() for k, v in g.items()}))
    return grads


def _compare(grads, params, out, what):
    for i, p in enumerate(params):
        assert set(grads[i]) == set(p), (i, sorted(grads[i]))
        for key, t in p.items():
            assert t.grad is not None, (what, i, key)
            assert_close(grads[i][key], t.grad.numpy(), (what, i, key))
    for key, t in out.items():
        assert_close(grads[-1][key], t.grad.numpy(), (what, "out", key))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_feedback_alignment_matches_torch(kind):
    cfg, net, x, y = make_net("fa", kind)
    params, _fixed, out = torch_arrays(net)
    Bs = [torch.tensor(b.feedback["B"]) for b in net.blocks]
    o = torch.tensor(x)
    for p, B, spec in zip(params, Bs, net.specs):
        o = fa_block(o, p, B, spec, net.slope)
    logits = LinearFA.apply(o.reshape(o.size(0), -1), out["W"], out["b"], torch.tensor(net.out.feedback["B"]))
    F.cross_entropy(logits, torch.tensor(y)).backward()
    _compare(_grads(net, "fa", cfg, x, y), params, out, ("fa", kind))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", ["dfa", "drtp"])
def test_direct_rules_match_torch(variant, kind):
    cfg, net, x, y = make_net(variant, kind)
    params, _fixed, out = torch_arrays(net)
    yt = torch.tensor(y)
    Y = F.one_hot(yt, net.num_classes).to(torch.float64)
    # forward once with constants to get the output error e (dfa) at the current weights
    with torch.no_grad():
        o = torch.tensor(x)
        for p, spec in zip(params, net.specs):
            _, o = block(o, p, spec, net.slope)
        logits = F.linear(o.reshape(o.size(0), -1), out["W"], out["b"])
        e = (torch.softmax(logits, 1) - Y) / len(y)
    signal = e if variant == "dfa" else Y / len(y)
    o = torch.tensor(x)
    surrogate = 0.0
    for p, b in zip(params, net.blocks):
        _, o = block(o.detach(), p, b.spec, net.slope)  # every block's input is a constant
        delta = (signal @ torch.tensor(b.feedback["D"])).reshape(o.shape)  # NOT A GRADIENT: the rule's error at o
        surrogate = surrogate + (o * delta).sum()
    out_loss = F.cross_entropy(F.linear(o.detach().reshape(o.size(0), -1), out["W"], out["b"]), yt)
    (surrogate + out_loss).backward()
    _compare(_grads(net, variant, cfg, x, y), params, out, (variant, kind))
    assert np.isfinite(out_loss.item())
