"""The residual block kinds (ResNet's basic and bottleneck blocks, Wide ResNet's pre-activation blocks, and the
stems): their backward is the gradient, float64, against finite differences (a global error runs through
every layer and the shortcut) and, per tap, under a local rule (each layer's input a constant, the shortcut
learning from the last tap); and, where PyTorch is installed, the same blocks built in PyTorch agree.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import host, numerical_grad, rel_error

from bioplaus.models import BlockSpec

CASES = {
    "basic-strided": BlockSpec("b", "basic", 3, 4, stride=2, size=3, size_in=5, dim_in_decoder=8),
    "basic-identity": BlockSpec("b", "basic", 3, 3, size=4, size_in=4, tail="avg"),
    "bottleneck": BlockSpec("b", "bottleneck", 3, 8, stride=2, size=3, size_in=5),
    "wide-basic": BlockSpec("b", "wide-basic", 3, 4, stride=2, size=3, size_in=5, tail="bn-avg"),
    "wide-basic-a": BlockSpec("b", "wide-basic-a", 4, 4, size=4, size_in=4, tail="bn-max2"),
    "wide-stem": BlockSpec("b", "wide-stem", 2, 3, size=4, size_in=4),
    "res-stem": BlockSpec("b", "res-stem", 2, 3, size=4, size_in=4),
}
N = 5
SLOPE = 0.01  # leaky: every path carries an error


def setup(spec, seed: int = 0, batch_norm: bool = True):
    """Parameters (γ, β away from 1, 0), an input, dropout masks and random weights of each tap and of o."""
    kind = spec.kind
    rng = np.random.default_rng(seed)
    p, running = kind.init(spec, batch_norm, rng)
    for k in p:
        if k.endswith(("gamma", "beta")):
            p[k] = p[k] + 0.3 * rng.standard_normal(p[k].shape)
    x = rng.standard_normal((N, spec.c_in, spec.size_in, spec.size_in))
    masks = tuple(np.where(rng.random((m.shape[0], m.shape[1], 1, 1) if m.channelwise else m.shape) < 0.3, 0.0,
                           1 / 0.7) for m in kind.mask_shapes(spec, N))
    fwd = kind.forward(x, p, running, spec, True, masks, SLOPE)
    Rs = [rng.standard_normal(h.shape) for h in fwd.hs]
    Ro = rng.standard_normal(fwd.o.shape)
    return p, running, x, masks, fwd, Rs, Ro


def assert_gradient(grad, numeric, key):
    """Relative error, or absolute where the true gradient is zero (a bias just before a batch norm)."""
    if np.abs(numeric).max() < 1e-7:
        assert np.abs(grad).max() < 1e-7, key
    else:
        assert rel_error(grad, numeric) < 1e-6, (key, rel_error(grad, numeric))


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_a_global_error_runs_through_the_block_and_its_shortcut(case, batch_norm):
    """Without --batch-norm the layers lose theirs; the shortcut's and the tail's stay, as the authors'."""
    spec = CASES[case]
    kind = spec.kind
    p, running, x, masks, fwd, Rs, Ro = setup(spec, batch_norm=batch_norm)
    assert sum(v.size for v in p.values()) == kind.num_parameters(spec, batch_norm) + sum(
        p[k].size for k in p if "_head_" in k and not kind.counts_head_bn)  # heads' BNs: not the network's

    def objective():  # every tap's h and the output o, weighted
        f = kind.forward(x, p, running, spec, True, masks, SLOPE)
        return sum(np.sum(h * R) for h, R in zip(f.hs, Rs)) + np.sum(f.o * Ro)

    dhs = kind.add_output_error(list(Rs), Ro, fwd.cache, through=True)
    dx, grads = kind.backward(tuple(dhs), fwd.cache, spec, need_dx=True)
    assert set(grads) == set(p)  # everything learns from a global error
    for key in grads:
        assert_gradient(grads[key], numerical_grad(objective, p[key]), key)
    assert_gradient(dx, numerical_grad(objective, x), "x")


@pytest.mark.parametrize("case", [c for c in CASES if not c.endswith("stem")])
def test_under_a_local_rule_each_tap_trains_its_own_layer_and_the_last_the_shortcut(case):
    """Local: each tap's error reaches only its own layer's arrays (the layer's input a constant), the
    shortcut's arrays learn from the last tap's, nothing leaves the block; the tail's BN learns nothing."""
    spec = CASES[case]
    kind = spec.kind
    p, running, x, masks, fwd, Rs, _ = setup(spec)
    _, local = kind.backward(tuple(Rs), fwd.cache, spec, need_dx=False)
    layers = kind.layers(spec)
    owner = {key: next((i for i, L in enumerate(layers) if key.startswith(L.name + "_")), len(layers) - 1)
             for key in p if not key.startswith("tail_")}
    assert set(local) == set(owner)
    for i in range(len(layers)):
        def objective(i=i):  # tap i's h, its layer's input held at the forward's value
            f = kind.forward(x, p, running, spec, True, masks, SLOPE)
            return np.sum(_layer_alone(kind, spec, p, running, masks, f.inputs, i) * Rs[i])

        for key in [k for k, owner_i in owner.items() if owner_i == i]:
            assert_gradient(local[key], numerical_grad(objective, p[key]), key)
    dx, _ = kind.backward(tuple(Rs), kind.forward(x, p, running, spec, True, masks, SLOPE).cache, spec, need_dx=True)
    assert dx is None  # no error leaves the block


def _layer_alone(kind, spec, p, running, masks, inputs, i):
    """Tap i's h recomputed with ops from the input its layer received in the forward (held fixed) and, on
    the last layer, the shortcut of the block's input x."""
    from bioplaus import ops

    layers = kind.layers(spec)
    L, u, x = layers[i], np.array(inputs[i]), np.array(inputs[0])
    v = u
    if L.pre_act:
        v = ops.bn_act_forward(u, p[f"{L.name}_pre_gamma"], p[f"{L.name}_pre_beta"], running[f"{L.name}_pre_mean"],
                               running[f"{L.name}_pre_var"], True, SLOPE)[0]
        mask = _pre_masks(kind, spec, masks)[i]
        v = v if mask is None else v * mask
    a, _ = ops.conv2d_forward(v, p[f"{L.name}_W"], p.get(f"{L.name}_b"), L.stride, L.pad)
    short = kind.shortcut(spec)
    s = None
    if i == len(layers) - 1 and short is not None:
        s = x
        if short.kind != "identity":
            s, _ = ops.conv2d_forward(x, p["short_W"], p.get("short_b"), short.stride, 0)
            if short.kind == "conv-bn":
                s = ops.batchnorm_forward(s, p["short_gamma"], p["short_beta"], running["short_mean"],
                                          running["short_var"], True)[0]
    if L.post_act:
        z = ops.batchnorm_forward(a, p[f"{L.name}_gamma"], p[f"{L.name}_beta"], running[f"{L.name}_mean"],
                                  running[f"{L.name}_var"], True)[0]
        return ops.act_forward(z if s is None else z + s, SLOPE)[0]
    a = a if s is None else a + s
    return ops.bn_act_forward(a, p[f"{L.name}_head_gamma"], p[f"{L.name}_head_beta"], running[f"{L.name}_head_mean"],
                              running[f"{L.name}_head_var"], True, SLOPE)[0]


def _pre_masks(kind, spec, masks):
    """Each layer's pre-act channel mask (None where it has none), in layer order."""
    out, left = [], list(masks)
    for L in kind.layers(spec):
        m = left.pop(0) if L.drop and left else None
        out.append(m if L.pre_act and L.drop == "channel" else None)
    return out


# ------------------------------------------------------------------------------ the same blocks in PyTorch
def _torch_block(torch, kind, spec, p, running, x, masks, train=True):
    """The block written with torch.nn.functional from its layer list, an independent forward in float64:
    returns (hs, o, new running statistics); autograd gives the reference gradients."""
    F = torch.nn.functional
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p.items()}
    new = {}

    def bn(name, a, momentum=0.1):
        rm, rv = torch.tensor(running[f"{name}_mean"]), torch.tensor(running[f"{name}_var"])
        out = F.batch_norm(a, rm, rv, t[f"{name}_gamma"], t[f"{name}_beta"], train, momentum, 1e-5)
        new[f"{name}_mean"], new[f"{name}_var"] = rm.numpy(), rv.numpy()
        return out

    act = lambda a: F.leaky_relu(a, SLOPE)
    xt = torch.tensor(x, requires_grad=True)
    left = [torch.tensor(m) for m in masks]
    short, layers = kind.shortcut(spec), kind.layers(spec)
    s = None
    if short is not None:
        s = xt
        if short.kind != "identity":
            s = F.conv2d(xt, t["short_W"], t.get("short_b"), short.stride)
            s = bn("short", s) if short.kind == "conv-bn" else s
    u, hs = xt, []
    for i, L in enumerate(layers):
        last = i == len(layers) - 1
        v = u
        if L.pre_act:
            v = act(bn(f"{L.name}_pre", u))
            v = v * left.pop(0) if L.drop == "channel" and left else v
        a = F.conv2d(v, t[f"{L.name}_W"], t.get(f"{L.name}_b"), L.stride, L.pad)
        if L.post_act:
            z = bn(L.name, a)
            h = act(z + s if last and s is not None else z)
            out = h * left.pop(0) if L.drop == "channel" and left else h
        else:
            a = a + s if last and s is not None else a
            h = act(bn(f"{L.name}_head", a))
            out = a * left.pop(0) if L.drop == "element" and left else a
        hs.append(h)
        u = out
    o = u
    if spec.tail.startswith("bn"):
        o = F.relu(bn("tail", o, 0.9))  # PyTorch's momentum 0.9: the WRN's final BatchNorm2d
    if spec.tail in ("avg", "bn-avg"):
        o = F.avg_pool2d(o, o.shape[-1])
    elif spec.tail == "bn-max2":
        o = F.max_pool2d(o, 2)
    return t, xt, hs, o, new


@pytest.mark.parametrize("case", CASES)
def test_the_block_agrees_with_pytorch_in_float64(case):
    torch = pytest.importorskip("torch")
    spec = CASES[case]
    kind = spec.kind
    p, running, x, masks, fwd, Rs, Ro = setup(spec, seed=3)
    t, xt, hs, o, new_running = _torch_block(torch, kind, spec, p, running, x, masks)
    for ours, theirs in zip(fwd.hs, hs):
        assert rel_error(ours, theirs.detach().numpy()) < 1e-10
    assert rel_error(fwd.o, o.detach().numpy()) < 1e-10
    for key, value in new_running.items():
        assert rel_error(fwd.running[key], value) < 1e-10, key
    loss = sum((h * torch.tensor(R)).sum() for h, R in zip(hs, Rs)) + (o * torch.tensor(Ro)).sum()
    loss.backward()
    dx, grads = kind.backward(tuple(kind.add_output_error(list(Rs), Ro, fwd.cache, True)), fwd.cache, spec, True)
    for key, g in grads.items():
        ref = t[key].grad.numpy()
        assert (np.abs(g - ref).max() < 1e-10) if np.abs(ref).max() < 1e-9 else rel_error(g, ref) < 1e-9, key
    assert rel_error(dx, xt.grad.numpy()) < 1e-9
    eval_fwd = kind.forward(x, p, fwd.running, spec, False, None, SLOPE)  # eval: the running statistics
    _, _, _, o_eval, _ = _torch_block(torch, kind, spec, p, fwd.running, x, (), train=False)
    assert rel_error(eval_fwd.o, o_eval.detach().numpy()) < 1e-10


@pytest.mark.parametrize("case", CASES)
def test_every_array_module_computes_the_block_alike(case, xp):
    """Forward and backward (global and local errors) on NumPy's GPU paths (Winograd for the 3x3 convolutions,
    fused element-wise passes) and on CuPy agree with NumPy's CPU paths in float64 (a step of a whole net in
    float32 is compared in tests/test_device_paths.py and tests/test_gpu.py)."""
    spec = CASES[case]
    kind = spec.kind
    p, running, x, masks, fwd, Rs, Ro = setup(spec, seed=5)
    ref_global = kind.backward(tuple(kind.add_output_error(list(Rs), Ro, fwd.cache, True)), fwd.cache, spec, True)
    ref_local = kind.backward(tuple(Rs), kind.forward(x, p, running, spec, True, masks, SLOPE).cache, spec, False)
    dev = lambda a: xp.asarray(a)
    pd, rd = {k: dev(v) for k, v in p.items()}, {k: dev(v) for k, v in running.items()}
    md = tuple(dev(m) for m in masks)
    got = kind.forward(dev(x), pd, rd, spec, True, md, SLOPE)
    assert all(isinstance(h, xp.ndarray) for h in got.hs) and isinstance(got.o, xp.ndarray)
    assert rel_error(host(got.o), fwd.o) < 1e-10
    for key in fwd.running:
        assert rel_error(host(got.running[key]), fwd.running[key]) < 1e-10, key
    dx, grads = kind.backward(tuple(kind.add_output_error([dev(R) for R in Rs], dev(Ro), got.cache, True)), got.cache,
                              spec, True)
    assert rel_error(host(dx), ref_global[0]) < 1e-10
    for key, g in ref_global[1].items():
        assert np.abs(host(grads[key]) - g).max() <= 1e-10 * max(1.0, np.abs(g).max()), key
    got = kind.forward(dev(x), pd, rd, spec, True, md, SLOPE)
    _, grads = kind.backward(tuple(dev(R) for R in Rs), got.cache, spec, False)
    assert set(grads) == set(ref_local[1])
    for key, g in ref_local[1].items():
        assert np.abs(host(grads[key]) - g).max() <= 1e-10 * max(1.0, np.abs(g).max()), key
