"""The eight learning rules vs the authors' semantics re-written in PyTorch (float64; skipped without torch).

An independent cross-check of :mod:`bioplaus.rules`: the reference below is written the way the
authors' PyTorch code computes each variant (detached block inputs and one ``loss.backward()`` per
block in the local rules; a feedback-alignment decoder as a custom autograd function in the bpf
rules; one backward of the summed losses in glob / glob+sim), from the same arrays as the tiny
networks of ``tests/test_rules.py``. Every gradient that bioplaus hands to its optimizer must match
torch's ``.grad``, and two Adam steps must match ``torch.optim.Adam``.

torch is used here only as a reference: the engine itself never imports it.
"""

from __future__ import annotations

import numpy as np
import pytest

from bioplaus.optim import make_optimizer
from bioplaus.rules import train_step
from tests.helpers import rel_error
from tests.test_rules import K, make_net

torch = pytest.importorskip("torch")
F = torch.nn.functional

VARIANTS = ["glob", "glob+sim", "pred", "sim", "predsim", "pred-bpf", "sim-bpf", "predsim-bpf"]
PRED = {"pred", "predsim", "pred-bpf", "predsim-bpf"}
SIM = {"glob+sim", "sim", "predsim", "sim-bpf", "predsim-bpf"}
LR, EPS = 1e-3, 1e-8  # torch.optim.Adam's and bioplaus's Adam defaults (eps)


@pytest.fixture(autouse=True, scope="module")
def torch_float64_one_thread():
    """float64 by default, one thread (tiny ops: threads only cost time); restored for other modules."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------- torch reference model
class FeedbackLinear(torch.autograd.Function):
    """y = x W^T + b; the error sent to x goes through the fixed matrix B, not through W."""

    @staticmethod
    def forward(ctx, x, W, b, B):
        ctx.save_for_backward(x, B)
        return x @ W.T + b

    @staticmethod
    def backward(ctx, grad_out):
        x, B = ctx.saved_tensors
        return grad_out @ B, grad_out.T @ x, grad_out.sum(0), None


def similarity_matrix(x):
    if x.dim() == 4 and x.size(1) > 3 and x.size(2) > 1:
        x = x.view(x.size(0), x.size(1), -1).std(dim=2)
    else:
        x = x.reshape(x.size(0), -1)
    xc = x - x.mean(dim=1, keepdim=True)
    xn = xc / (1e-8 + torch.sqrt(torch.sum(xc**2, dim=1, keepdim=True)))
    return (xn @ xn.T).clamp(-1, 1)


def block(x, p, spec, slope):
    """-> (h, o): Linear/Conv2d -> BatchNorm (batch statistics) -> LeakyReLU -> [MaxPool2d(2)]."""
    if spec.kind.name == "dense":
        a = F.linear(x.reshape(x.size(0), -1), p["W"], p["b"])
    else:
        a = F.conv2d(x, p["W"], p["b"], stride=spec.stride, padding=spec.pad)
    h = F.leaky_relu(F.batch_norm(a, None, None, p["gamma"], p["beta"], training=True, eps=1e-5), slope)
    return h, (F.max_pool2d(h, 2) if spec.pool_after else h)


def local_loss(variant, beta, h, y, p, f, spec):
    bpf = variant.endswith("-bpf")
    Y = F.one_hot(y, K).to(h.dtype)
    pooled = h
    if spec.kind.name == "conv" and spec.dec_window != (1, 1):
        pooled = torch.nn.AvgPool2d(spec.dec_window, padding=spec.dec_pad)(h)
    pred = sim = 0.0
    if variant in PRED:
        flat = pooled.reshape(h.size(0), -1)
        if bpf:
            logits = FeedbackLinear.apply(flat, p["dec_W"], p["dec_b"], f["B"])
            pred = F.binary_cross_entropy_with_logits(logits, (Y @ f["P"] > 0).to(h.dtype))
        else:
            pred = F.cross_entropy(F.linear(flat, p["dec_W"], p["dec_b"]), y)
    if variant in SIM:
        if bpf:
            Rh, Ry = similarity_matrix(pooled), similarity_matrix(Y @ f["P"])
        else:
            z = F.conv2d(h, p["sim_W"], padding=1) if spec.kind.name == "conv" else F.linear(h, p["sim_W"])
            Rh, Ry = similarity_matrix(z), similarity_matrix(Y)
        sim = F.mse_loss(Rh, Ry)
    if variant.startswith("predsim"):
        return (1 - beta) * pred + beta * sim
    return pred + sim


def torch_arrays(net):
    """Leaf tensors copied from net's arrays: (block params, fixed matrices, output params)."""
    leaf = lambda a: torch.tensor(a, requires_grad=True)
    params = [{k: leaf(v) for k, v in b.params.items()} for b in net.blocks]
    fixed = [{k: torch.tensor(v) for k, v in b.fixed.items()} for b in net.blocks]
    return params, fixed, {k: leaf(v) for k, v in net.out.params.items()}


def torch_step(variant, beta, net, params, fixed, out, x, y):
    """The authors' step: fills every leaf's .grad, returns the output loss."""
    o, y = torch.tensor(x), torch.tensor(y)
    total = 0.0
    for p, f, spec in zip(params, fixed, net.specs):
        if variant in ("glob", "glob+sim"):
            h, o = block(o, p, spec, net.slope)
            if variant == "glob+sim":
                total = total + local_loss("sim", beta, h, y, p, f, spec)
        else:
            h, o = block(o.detach(), p, spec, net.slope)
            local_loss(variant, beta, h, y, p, f, spec).backward()
    x_last = o if variant in ("glob", "glob+sim") else o.detach()
    loss_out = F.cross_entropy(F.linear(x_last.reshape(x_last.size(0), -1), out["W"], out["b"]), y)
    w_out = 1 - beta if variant.startswith("predsim") else 1.0
    (total + w_out * loss_out).backward()
    return loss_out


# ----------------------------------------------------------------------------------------- tests
def bioplaus_step(net, variant, beta, x, y, on_grads):
    return train_step(net, variant, beta, x, y, [None] * len(net.specs), on_grads).loss


def assert_close(ours, theirs, what, tol=1e-10):
    """Relative error below tol, or both zero to rounding (a bias before batch norm has no gradient)."""
    ok = rel_error(ours, theirs) < tol or np.max(np.abs(ours - theirs)) < 1e-12
    assert ok, (what, rel_error(ours, theirs), float(np.max(np.abs(ours - theirs))))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match_the_authors_torch_semantics(variant, kind):
    cfg, net, x, y = make_net(variant, kind)
    params, fixed, out = torch_arrays(net)
    loss_out = torch_step(variant, cfg.beta, net, params, fixed, out, x, y)
    grads = {}
    loss = bioplaus_step(net, variant, cfg.beta, x, y,
                         lambda i, g: grads.__setitem__(i, {k: v.copy() for k, v in g.items()}))
    assert abs(float(loss) - loss_out.item()) < 1e-12
    assert sorted(grads) == [-1, *range(len(net.blocks))]
    for i, p in enumerate(params):
        assert set(grads[i]) == set(p), (i, sorted(grads[i]), sorted(p))
        for key, t in p.items():
            assert t.grad is not None, (i, key)
            assert_close(grads[i][key], t.grad.numpy(), (variant, kind, i, key))
    for key, t in out.items():
        assert_close(grads[-1][key], t.grad.numpy(), (variant, kind, "out", key))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", ["glob", "predsim", "predsim-bpf"])
def test_adam_steps_match_torch_adam(variant, kind):
    """Two training steps, each layer stepping its Adam as soon as its gradients are ready (as the
    trainer does) vs torch.optim.Adam after the authors' step; the second step uses the bias
    corrections and both moment averages."""
    cfg, net, x, y = make_net(variant, kind)
    states = [*net.blocks, net.out]
    before = [{k: v.copy() for k, v in s.params.items()} for s in states]
    params, fixed, out = torch_arrays(net)
    torch_opt = torch.optim.Adam([t for p in [*params, out] for t in p.values()], lr=LR)
    opt, slots, grad_gap = make_optimizer("adam"), {}, {}

    def update(i, grads):
        p, theirs = (net.out.params, out) if i == -1 else (net.blocks[i].params, params[i])
        for key, g in grads.items():
            assert_close(g, theirs[key].grad.numpy(), (variant, kind, i, key))  # so the slack below is tiny
            opt.step(p[key], g, slots.setdefault((i, key), opt.init_state(p[key])), LR)
            grad_gap[i, key] = grad_gap.get((i, key), 0) + np.abs(g - theirs[key].grad.numpy())

    for _ in range(2):
        torch_opt.zero_grad()
        torch_step(variant, cfg.beta, net, params, fixed, out, x, y)
        bioplaus_step(net, variant, cfg.beta, x, y, update)
        torch_opt.step()
    for i, (state, theirs, p0) in enumerate(zip(states, [*params, out], before)):
        i = -1 if i == len(net.blocks) else i
        for key, value in state.params.items():
            assert np.any(value != p0[key]), (i, key)  # it did move
            # where a gradient is 0 to rounding (a bias, or a shift the next batch norm cancels), Adam
            # divides rounding noise by eps: the step moves p by up to lr/eps times the gap in g
            gap = np.abs(value - theirs[key].detach().numpy())
            slack = 2 * LR / EPS * grad_gap[i, key]
            assert np.all(gap <= 1e-11 + slack), (variant, kind, i, key, float(np.max(gap - slack)))

