"""The CuPy backend on a real GPU (skipped without one; run by sims/benchmarks/gpu_check.sh).

- One training step per variant from identical weights: CuPy gradients agree with NumPy's to
  float32 rounding, come back as CuPy arrays, and stay float32.
- No device->host transfer inside a training step; one per epoch for the statistics.
"""

from __future__ import annotations

import numpy as np
import pytest

from bioplaus.backend import NUMPY, get_backend, gpu_available
from bioplaus.blocks import init_network
from bioplaus.config import VARIANTS, Config
from bioplaus.models import build_spec
from bioplaus.rules import train_step

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")]


def _step(backend, variant, kind):
    model = {"model": "mlp", "num_layers": 2, "num_hidden": 64} if kind == "mlp" else \
        {"model": "vgg6b", "feat_mult": 0.125, "num_layers": 1, "num_hidden": 64, "dim_in_decoder": 512}
    cfg = Config(variant=variant, nonlin="leakyrelu", **model).resolve()
    net = init_network(build_spec(cfg, (1, 28, 28), 10), cfg, backend)  # drawn on the host: identical
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.normal(size=(32, 1, 28, 28)).astype(np.float32))
    y = backend.asarray(rng.integers(0, 10, 32))
    grads = {}
    train_step(net, variant, cfg.beta, x, y, [None] * len(net.spec.blocks),
               lambda i, g: grads.__setitem__(i, dict(g)))
    return grads


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step_agrees_with_numpy(variant, kind):
    gpu = get_backend("gpu")
    ours, ref = _step(gpu, variant, kind), _step(NUMPY, variant, kind)
    assert ours.keys() == ref.keys()
    for i in ref:
        for key, g in ref[i].items():
            got = ours[i][key]
            assert isinstance(got, gpu.xp.ndarray) and got.dtype == np.float32, (i, key)
            host = gpu.to_host(got)
            scale = max(1e-12, float(np.abs(g).max()))
            assert float(np.abs(host - g).max()) / scale < 2e-3, (variant, kind, i, key)


def test_no_host_transfer_inside_a_training_step(monkeypatch):
    import cupy

    gpu = get_backend("gpu")
    cfg = Config(variant="predsim-bpf", model="mlp", num_layers=2, num_hidden=64, dropout=0.1).resolve()
    net = init_network(build_spec(cfg, (1, 28, 28), 10), cfg, gpu)
    x = cupy.random.standard_normal((32, 1, 28, 28), dtype=cupy.float32)
    y = cupy.random.randint(0, 10, 32)
    transfers = []

    def spy(name, real):
        def wrapped(*args, **kwargs):
            transfers.append(name)
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(cupy, "asnumpy", spy("asnumpy", cupy.asnumpy))
    for name in ("get", "item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(cupy.ndarray, name, spy(name, getattr(cupy.ndarray, name)))
    from bioplaus import ops

    rng = gpu.rng(1, "dropout", 0, 1)
    masks = [ops.dropout_mask(rng, (32, 64), 0.1, cupy.float32) for _ in net.spec.blocks]
    for _ in range(3):
        _running, loss, _correct, _stats = train_step(net, cfg.variant, cfg.beta, x, y, masks, lambda i, g: None)
    assert transfers == [], transfers
    assert isinstance(loss, cupy.ndarray)
