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

from bioplaus.backend import blocked, get_array_module
from bioplaus.ops import kernels


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
        if not param.flags.c_contiguous:
            raise ValueError("Adam updates parameters in place and needs them contiguous")
        b1, b2 = self.beta1, self.beta2
        state["step"] += 1
        t = state["step"]
        f = param.dtype.type
        # lr/(1-b1^t) * m / (sqrt(v)/c + eps) with c = sqrt(1-b2^t), rewritten as
        # (lr c/(1-b1^t)) * m / (sqrt(v) + eps c): the same value, one pass fewer
        c = math.sqrt(1 - b2**t)
        step_size, eps_c = f(lr * c / (1 - b1**t)), f(self.eps * c)
        wd = f(self.weight_decay)
        if kernels.available(xp):  # a GPU: all of it in one kernel, in place
            outs = (param, state["m"], state["v"]) + ((state["max_v"],) if self.amsgrad else ())
            kernels.get(xp, "amsgrad" if self.amsgrad else "adam")(
                grad, wd, f(b1), f(1 - b1), f(b2), f(1 - b2), step_size, eps_c, *outs)
            return
        p, g = param.reshape(-1), grad.reshape(-1)
        m, v = state["m"].reshape(-1), state["v"].reshape(-1)
        v_max = state["max_v"].reshape(-1) if self.amsgrad else None

        def passes(lo: int, hi: int) -> None:  # all of Adam on p[lo:hi]; every pass writes in place
            pb, mb, vb = p[lo:hi], m[lo:hi], v[lo:hi]
            gb = g[lo:hi]
            tmp = xp.empty_like(pb)  # one scratch block
            if wd:
                gb = pb * wd
                gb += g[lo:hi]
            xp.multiply(gb, f(1 - b1), out=tmp)
            mb *= f(b1)
            mb += tmp
            xp.multiply(gb, gb, out=tmp)
            tmp *= f(1 - b2)
            vb *= f(b2)
            vb += tmp
            if v_max is not None:
                xp.maximum(v_max[lo:hi], vb, out=v_max[lo:hi])
                vb = v_max[lo:hi]
            xp.sqrt(vb, out=tmp)
            tmp += eps_c
            xp.divide(mb, tmp, out=tmp)
            tmp *= step_size
            pb -= tmp

        blocked(xp, p.size, passes)


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
