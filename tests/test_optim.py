"""Optimizers vs steps computed by hand from PyTorch's formulas; the milestone schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bioplaus.config import Config
from bioplaus.optim import make_optimizer, milestone_lr


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


GRADS = [np.array([0.5, -1.0, 2.0]), np.array([0.1, 0.3, -0.2]), np.array([-0.7, 0.0, 1.5])]
P0 = np.array([1.0, -2.0, 0.25])


def adam_by_hand(p, grads, lr, wd=0.0, amsgrad=False, b1=0.9, b2=0.999, eps=1e-8):
    p = list(p)
    m, v, vmax = [0.0] * 3, [0.0] * 3, [0.0] * 3
    for t, g in enumerate(grads, start=1):
        for i in range(3):
            gi = g[i] + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            vmax[i] = max(vmax[i], v[i])
            vv = vmax[i] if amsgrad else v[i]
            denom = math.sqrt(vv) / math.sqrt(1 - b2**t) + eps
            p[i] -= lr / (1 - b1**t) * m[i] / denom
    return np.array(p)


def sgd_by_hand(p, grads, lr, momentum=0.0, wd=0.0):
    p = list(p)
    buf = [0.0] * 3
    for t, g in enumerate(grads, start=1):
        for i in range(3):
            gi = g[i] + wd * p[i]
            if momentum:
                buf[i] = gi if t == 1 else momentum * buf[i] + gi
                gi = buf[i]
            p[i] -= lr * gi
    return np.array(p)


@pytest.mark.parametrize("name", ["adam", "amsgrad"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_matches_hand_computation(xp, name, wd):
    opt = make_optimizer(name, weight_decay=wd)
    param = xp.asarray(P0.copy())
    state = opt.init_state(param)
    buffer_id = id(param)
    for g in GRADS:
        opt.step(param, xp.asarray(g), state, lr=0.01)
    assert id(param) == buffer_id and isinstance(param, xp.ndarray)
    assert state["step"] == 3 and isinstance(state["step"], int)
    expect = adam_by_hand(P0, GRADS, 0.01, wd=wd, amsgrad=name == "amsgrad")
    assert np.allclose(host(param), expect, rtol=0, atol=1e-14)
    assert ("max_v" in state) == (name == "amsgrad")


def test_amsgrad_differs_from_adam_when_v_shrinks():
    grads = [np.array([5.0, 5.0, 5.0]), np.array([0.01, 0.01, 0.01])]
    a, b = adam_by_hand(P0, grads, 0.1), adam_by_hand(P0, grads, 0.1, amsgrad=True)
    assert not np.allclose(a, b)  # so the test above can tell them apart
    for name, expect in (("adam", a), ("amsgrad", b)):
        opt = make_optimizer(name)
        p = P0.copy()
        st = opt.init_state(p)
        for g in grads:
            opt.step(p, g, st, 0.1)
        assert np.allclose(p, expect, atol=1e-14)


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4), (0.5, 0.1)])
def test_sgd_matches_hand_computation(xp, momentum, wd):
    opt = make_optimizer("sgd", momentum=momentum, weight_decay=wd)
    param = xp.asarray(P0.copy())
    state = opt.init_state(param)
    for g in GRADS:
        opt.step(param, xp.asarray(g), state, lr=0.05)
    expect = sgd_by_hand(P0, GRADS, 0.05, momentum=momentum, wd=wd)
    assert np.allclose(host(param), expect, rtol=0, atol=1e-14)


def test_step_keeps_float32_and_does_not_touch_grad():
    opt = make_optimizer("adam", weight_decay=0.01)
    p = np.ones((2, 3), dtype=np.float32)
    g = np.full((2, 3), 0.5, dtype=np.float32)
    st = opt.init_state(p)
    opt.step(p, g, st, 1e-3)
    assert p.dtype == st["m"].dtype == st["v"].dtype == np.float32
    assert np.all(g == 0.5)
    assert np.allclose(p, 1 - 1e-3, atol=1e-6)  # Adam's first step is lr * sign(g)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop")


def test_milestone_lr_matches_config():
    milestones = (200, 300, 350, 375)
    assert milestone_lr(5e-4, 1, milestones, 0.25) == 5e-4
    assert milestone_lr(5e-4, 200, milestones, 0.25) == 5e-4
    assert milestone_lr(5e-4, 201, milestones, 0.25) == 5e-4 * 0.25
    assert milestone_lr(5e-4, 400, milestones, 0.25) == pytest.approx(5e-4 * 0.25**4)
    cfg = Config(lr=5e-4, lr_decay_milestones=milestones, lr_decay_fact=0.25)
    for epoch in (1, 199, 200, 201, 301, 351, 376, 400):
        assert milestone_lr(5e-4, epoch, milestones, 0.25) == cfg.lr_at(epoch)
