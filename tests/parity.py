"""One training step of a small net on two code paths, compared to float32 rounding.

Shared by ``test_gpu.py`` (CuPy on a GPU against NumPy) and ``test_device_paths.py`` (NumPy on the
GPU's code paths against NumPy on the CPU's). Both sides start from identical weights (drawn on the
host) and use the same host-drawn dropout masks; each gradient is compared with the largest gradient
of its layer, since batch norm makes a bias gradient exactly zero up to rounding.
"""

from __future__ import annotations

import functools

import numpy as np
from helpers import host

from bioplaus import models
from bioplaus.config import Config
from bioplaus.kinds import draw_masks
from bioplaus.models import build_spec
from bioplaus.rules import evaluate_batch, init_network, train_step

N = 32
STEP_TOL = 2e-3  # of the layer's largest gradient
LOSS_TOL = 1e-4
STAT_TOL = 1e-3
# A residual net's step, with Winograd on one side: 17 batch-normed layers in float32 put a few pre-activations
# within rounding of φ's kink, and a weight gradient with cancellations moves by up to ~1e-2 of its layer's
# largest (an input perturbed by 1e-6 moves it as much, on one path alone). The blocks' arithmetic on every path
# is checked in float64 to 1e-10 (tests/test_residual_blocks.py); the step is checked for its plumbing.
RESIDUAL_STEP_TOL = 5e-2


for _adapted in (False, True):  # a Wide ResNet of widen factor 1 (16, 16, 32, 64 channels), for tests only
    if f"wresnet10-1{'a' if _adapted else ''}" not in models.MODELS:
        models.register_model(f"wresnet10-1{'a' if _adapted else ''}",
                              functools.partial(models.wide_resnet, depth=10, k=1, adapted=_adapted))
MODELS = {
    "mlp": {"model": "mlp", "num_layers": 2, "num_hidden": 64},
    "conv": {"model": "vgg6b", "feat_mult": 0.125, "num_layers": 1, "num_hidden": 64, "dim_in_decoder": 512},
    "resnet": {"model": "resnet18", "feat_mult": 0.0625, "dim_in_decoder": 256},
    "wrn": {"model": "wresnet10-1", "dim_in_decoder": 256},
    "wrn-a": {"model": "wresnet10-1a", "dim_in_decoder": 256},
}
RESIDUAL_VARIANTS = ("glob", "predsim", "predsim-bpf")  # a global error through the shortcuts, the heads, bpf


def config(variant, kind, dropout=0.0, **settings):
    """A two-block mlp; vgg6b at 1/8 width (four 3x3 convs, 28x28 down to 3x3) with one dense block; resnet18 at
    1/16 width (4 to 32 channels); a Wide ResNet of depth 10 and widen factor 1, plain or adapted."""
    return Config(variant=variant, nonlin="leakyrelu", dropout=dropout, **MODELS[kind], **settings).resolve()


def host_masks(cfg, spec):
    """Dropout masks drawn once on the host, handed to both backends."""
    rng = np.random.default_rng(7)
    return [draw_masks(b, rng, cfg.dropout, N, np.float32) for b in spec.blocks]


def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, N)


def step(backend, variant, kind, **settings):
    """``(grads per block, loss, correct, stats)`` of one training step with dropout 0.2."""
    cfg = config(variant, kind, dropout=0.2, **settings)
    spec = build_spec(cfg, (1, 28, 28), 10)
    net = init_network(spec, cfg, backend)  # drawn on the host: identical
    x, y = batch()
    masks = [None if m is None else tuple(backend.asarray(a) for a in m) for m in host_masks(cfg, spec)]
    grads = {}
    _out, _running, loss, correct, stats = train_step(net, variant, cfg.beta, backend.asarray(x), backend.asarray(y),
                                                masks, lambda i, g: grads.__setitem__(i, dict(g)))
    return grads, loss, correct, stats


def evaluation(backend, variant, kind):
    """``(loss, correct, stats)`` in eval mode, after two training steps moved BN's running statistics."""
    cfg = config(variant, kind)
    net = init_network(build_spec(cfg, (1, 28, 28), 10), cfg, backend)
    x, y = (backend.asarray(a) for a in batch())
    for _ in range(2):
        running = train_step(net, variant, cfg.beta, x, y, [None] * len(net.specs), lambda i, g: None).running
        for block, r in zip(net.blocks, running):
            block.running = r
    _out, _running, loss, correct, stats = evaluate_batch(net, variant, x * 0.5, y)
    return float(loss), int(correct), {layer: {k: float(v) for k, v in s.items()} for layer, s in stats.items()}


def assert_layer_close(ours: dict, ref: dict, xp, tol: float, what) -> None:
    assert ours.keys() == ref.keys(), what
    scale = max([1e-12] + [float(np.abs(host(g)).max()) for g in ref.values()])  # the layer's largest gradient
    for key, g in ref.items():
        got = ours[key]
        assert isinstance(got, xp.ndarray) and got.dtype == np.float32, (what, key)
        err = float(np.abs(host(got) - host(g)).max()) / scale
        assert err < tol, (what, key, err)


def assert_steps_agree(ours, ref, xp, what, tol: float = STEP_TOL) -> None:
    """Two results of :func:`step`: gradients, loss, correct count and every local statistic."""
    grads, loss, correct, stats = ours
    ref_grads, ref_loss, ref_correct, ref_stats = ref
    assert grads.keys() == ref_grads.keys()
    for i in ref_grads:
        assert_layer_close(grads[i], ref_grads[i], xp, tol, (*what, i))
    assert abs(float(loss) - float(ref_loss)) < LOSS_TOL * max(1.0, abs(float(ref_loss)))
    assert int(correct) == int(ref_correct)
    assert_stats_close(stats, ref_stats)


def assert_stats_close(stats, ref_stats) -> None:
    assert stats.keys() == ref_stats.keys()
    for layer, r in ref_stats.items():
        s = stats[layer]
        assert s.keys() == r.keys()
        for key in r:
            assert abs(float(s[key]) - float(r[key])) <= STAT_TOL * max(1.0, abs(float(r[key]))), key


def assert_evaluations_agree(ours, ref) -> None:
    (loss, correct, stats), (ref_loss, ref_correct, ref_stats) = ours, ref
    assert abs(loss - ref_loss) < LOSS_TOL * max(1.0, abs(ref_loss)) and correct == ref_correct
    assert_stats_close(stats, ref_stats)
