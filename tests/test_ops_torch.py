"""Ops vs PyTorch autograd in float64 (an independent implementation; skipped without torch).

torch is used here only as a reference: the engine itself never imports it.
"""

from __future__ import annotations

import numpy as np
import pytest

from bioplaus import ops

torch = pytest.importorskip("torch")
F = torch.nn.functional
TOL = 1e-10


def close(a, b, tol=TOL):
    a = np.asarray(a, dtype=np.float64)
    b = b.detach().numpy() if hasattr(b, "detach") else np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    return float(np.max(np.abs(a - b))) <= tol * scale if a.size else True


def leaf(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize(
    "N,C,H,Wd,Fo,k,stride,pad",
    [(3, 4, 8, 8, 5, 3, 1, 1), (2, 3, 13, 11, 4, 7, 2, 3), (2, 6, 4, 4, 3, 1, 1, 0), (2, 3, 7, 7, 2, 3, 2, 0)],
)
def test_conv(N, C, H, Wd, Fo, k, stride, pad):
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((N, C, H, Wd)), rng.standard_normal((Fo, C, k, k)), rng.standard_normal(Fo)
    out, cache = ops.conv2d_forward(x, W, b, stride, pad)
    R = rng.standard_normal(out.shape)
    dx, dW, db = ops.conv2d_backward(R, cache)
    tx, tW, tb = leaf(x), leaf(W), leaf(b)
    tout = F.conv2d(tx, tW, tb, stride=stride, padding=pad)
    (tout * torch.tensor(R)).sum().backward()
    assert close(out, tout) and close(dx, tx.grad) and close(dW, tW.grad) and close(db, tb.grad)


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 5), (2, 2, 3, 3)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm(shape, train):
    rng = np.random.default_rng(1)
    C = shape[1]
    x, gamma, beta = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), 0.5 + rng.random(C)
    out, cache, nrm, nrv = ops.batchnorm_forward(x, gamma, beta, rm, rv, train, momentum=0.1, eps=1e-5)
    R = rng.standard_normal(shape)
    dx, dg, db = ops.batchnorm_backward(R, cache)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    tx, tg, tb = leaf(x), leaf(gamma), leaf(beta)
    tout = F.batch_norm(tx, trm, trv, tg, tb, training=train, momentum=0.1, eps=1e-5)  # updates trm, trv
    (tout * torch.tensor(R)).sum().backward()
    assert close(out, tout) and close(dx, tx.grad) and close(dg, tg.grad) and close(db, tb.grad)
    assert close(nrm, trm) and close(nrv, trv)


@pytest.mark.parametrize("shape", [(6, 5, 4, 4), (5, 3, 4, 4), (4, 6, 1, 1), (5, 9)])
def test_similarity(shape):
    rng = np.random.default_rng(2)
    X = rng.standard_normal(shape)
    S, cache = ops.similarity_forward(X)
    R = rng.standard_normal(S.shape)
    dX = ops.similarity_backward(R, cache)
    tX = leaf(X)
    z = tX
    if z.dim() == 4 and z.size(1) > 3 and z.size(2) > 1:
        z = z.view(z.size(0), z.size(1), -1).std(dim=2)
    else:
        z = z.view(z.size(0), -1)
    zc = z - z.mean(dim=1, keepdim=True)
    zn = zc / (1e-8 + torch.sqrt(torch.sum(zc**2, dim=1, keepdim=True)))
    tS = (zn @ zn.t()).clamp(-1, 1)
    (tS * torch.tensor(R)).sum().backward()
    assert close(S, tS) and close(dX, tX.grad)


def test_losses():
    rng = np.random.default_rng(3)
    z, y = rng.standard_normal((7, 5)) * 3, rng.integers(0, 5, 7)
    loss, dz = ops.softmax_cross_entropy(z, y)
    tz = leaf(z)
    tl = F.cross_entropy(tz, torch.tensor(y))
    tl.backward()
    assert close(loss, tl) and close(dz, tz.grad)

    t = (rng.random((7, 5)) > 0.5).astype(np.float64)
    loss, dz = ops.sigmoid_bce_with_logits(z, t)
    tz = leaf(z)
    tl = F.binary_cross_entropy_with_logits(tz, torch.tensor(t))
    tl.backward()
    assert close(loss, tl) and close(dz, tz.grad)

    target = rng.standard_normal((7, 5))
    loss, dz = ops.mse(z, target)
    tz = leaf(z)
    tl = F.mse_loss(tz, torch.tensor(target))
    tl.backward()
    assert close(loss, tl) and close(dz, tz.grad)


@pytest.mark.parametrize(
    "shape,window,pad",
    [((2, 3, 7, 7), (4, 2), (2, 1)), ((2, 2, 28, 28), (8, 4), (4, 0)), ((1, 2, 6, 6), (2, 2), (0, 0))],
)
def test_avgpool(shape, window, pad):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    out, cache = ops.avgpool2d_forward(x, window, pad)
    R = rng.standard_normal(out.shape)
    dx = ops.avgpool2d_backward(R, cache)
    tx = leaf(x)
    tout = F.avg_pool2d(tx, window, stride=window, padding=pad, count_include_pad=True, ceil_mode=False)
    (tout * torch.tensor(R)).sum().backward()
    assert out.shape == tuple(tout.shape) and close(out, tout) and close(dx, tx.grad)


@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (2, 2, 7, 5)])
def test_maxpool_with_ties(shape):
    rng = np.random.default_rng(5)
    x = np.round(rng.standard_normal(shape), 0)  # many ties inside windows
    out, cache = ops.maxpool2d_forward(x, 2)
    R = rng.standard_normal(out.shape)
    dx = ops.maxpool2d_backward(R, cache)
    tx = leaf(x)
    tout = F.max_pool2d(tx, 2)
    (tout * torch.tensor(R)).sum().backward()
    assert close(out, tout) and close(dx, tx.grad)


@pytest.mark.parametrize("slope", [0.0, 0.01])
def test_activation_including_zero(slope):
    a = np.array([-2.0, -0.5, 0.0, 0.0, 0.3, 4.0])
    h, cache = ops.act_forward(a, slope)
    da = ops.act_backward(np.ones_like(a), cache)
    ta = leaf(a)
    th = F.leaky_relu(ta, slope) if slope else F.relu(ta)
    th.sum().backward()
    assert close(h, th) and close(da, ta.grad)


@pytest.mark.parametrize("name", ["adam", "amsgrad", "sgd"])
def test_optimizers_match_torch(name):
    from bioplaus.optim import make_optimizer

    rng = np.random.default_rng(6)
    p0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(4)]
    opt = make_optimizer(name, momentum=0.9, weight_decay=1e-3)
    p = p0.copy()
    st = opt.init_state(p)
    tp = torch.nn.Parameter(torch.tensor(p0))
    if name == "sgd":
        topt = torch.optim.SGD([tp], lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        topt = torch.optim.Adam([tp], lr=0.1, weight_decay=1e-3, amsgrad=name == "amsgrad")
    for g in grads:
        opt.step(p, g, st, 0.1)
        tp.grad = torch.tensor(g)
        topt.step()
    assert close(p, tp, tol=1e-13)
