"""Optimizers with PyTorch's update rules, stepping each parameter in place, and the lr schedule.

Adam (torch.optim.Adam, L2 weight decay added to the gradient, not decoupled), at step t:
    g = grad + wd * p
    m = b1 m + (1 - b1) g;     v = b2 v + (1 - b2) g^2;     (AMSGrad: vmax = max(vmax, v), use vmax)
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
SGD (torch.optim.SGD, dampening 0, no Nesterov):
    g = grad + wd * p;   buf = g at t = 1, else buf = momentum * buf + g;   p -= lr * buf

The step counter is a host int, so the bias corrections never read the device. ``step`` updates
``param`` and the state arrays in place: no new parameter array is made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bioplaus.backend import get_array_module


class Adam:
    """Adam / AMSGrad with PyTorch semantics (beta1 0.9, beta2 0.999, eps 1e-8 by default)."""

    def __init__(
        self,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.weight_decay = weight_decay
        self.amsgrad = amsgrad
        self.beta1, self.beta2 = betas
        self.eps = eps

    def init_state(self, param) -> dict:
        xp = get_array_module(param)
        state = {"step": 0, "m": xp.zeros_like(param), "v": xp.zeros_like(param)}
        if self.amsgrad:
            state["max_v"] = xp.zeros_like(param)
        return state

    def step(self, param, grad, state: dict, lr: float) -> None:
        xp = get_array_module(param)
        b1, b2 = self.beta1, self.beta2
        state["step"] += 1
        t = state["step"]
        if self.weight_decay:
            grad = grad + param.dtype.type(self.weight_decay) * param
        m, v = state["m"], state["v"]
        tmp = xp.empty_like(param)  # one scratch buffer: every pass below writes in place (no temporaries)
        xp.multiply(grad, grad.dtype.type(1 - b1), out=tmp)
        m *= m.dtype.type(b1)
        m += tmp
        xp.multiply(grad, grad, out=tmp)
        tmp *= tmp.dtype.type(1 - b2)
        v *= v.dtype.type(b2)
        v += tmp
        if self.amsgrad:
            xp.maximum(state["max_v"], v, out=state["max_v"])
            v = state["max_v"]
        # lr/(1-b1^t) * m / (sqrt(v)/c + eps) with c = sqrt(1-b2^t), rewritten as
        # (lr c/(1-b1^t)) * m / (sqrt(v) + eps c): the same value, one pass fewer
        c = math.sqrt(1 - b2**t)
        xp.sqrt(v, out=tmp)
        tmp += tmp.dtype.type(self.eps * c)
        xp.divide(m, tmp, out=tmp)
        tmp *= param.dtype.type(lr * c / (1 - b1**t))
        param -= tmp


class SGD:
    """SGD with optional momentum and L2 weight decay (PyTorch semantics, dampening 0)."""

    def __init__(self, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.momentum = momentum
        self.weight_decay = weight_decay

    def init_state(self, param) -> dict:
        xp = get_array_module(param)
        state = {"step": 0}
        if self.momentum:
            state["momentum_buffer"] = xp.zeros_like(param)
        return state

    def step(self, param, grad, state: dict, lr: float) -> None:
        state["step"] += 1
        if self.weight_decay:
            grad = grad + param.dtype.type(self.weight_decay) * param
        if self.momentum:
            buf = state["momentum_buffer"]
            if state["step"] == 1:
                buf[...] = grad
            else:
                buf *= buf.dtype.type(self.momentum)
                buf += grad
            grad = buf
        param -= param.dtype.type(lr) * grad


OPTIMIZERS = ("adam", "amsgrad", "sgd")


def make_optimizer(name: str, momentum: float = 0.0, weight_decay: float = 0.0):
    """``adam``, ``amsgrad`` or ``sgd`` -> an object with ``init_state(param)`` and ``step(...)``."""
    if name == "adam":
        return Adam(weight_decay=weight_decay)
    if name == "amsgrad":
        return Adam(weight_decay=weight_decay, amsgrad=True)
    if name == "sgd":
        return SGD(momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def milestone_lr(lr0: float, epoch: int, milestones: Sequence[int], fact: float) -> float:
    """Learning rate of 1-based ``epoch``: ``lr0`` decayed by ``fact`` once per milestone m <= epoch - 1."""
    passed = sum(1 for m in milestones if epoch - 1 >= m)
    return lr0 * fact**passed
