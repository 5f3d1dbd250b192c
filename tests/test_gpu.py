"""The CuPy backend on a real GPU (skipped without one; ``BIOPLAUS_REQUIRE_GPU=1`` turns the skip into
a failure; run by sims/benchmarks/gpu_check.sh).

- One training step per variant from identical weights, with the same host-drawn dropout masks:
  CuPy gradients agree with NumPy's to float32 rounding (each compared with the largest gradient
  of its layer, since BN makes a bias gradient exactly zero up to rounding), come back as CuPy
  arrays, and stay float32. The same for evaluation (eval-mode BN, every local statistic).
- No device->host transfer inside a training step (mlp and a vgg-style net); one per epoch.
- A short ``Trainer`` epoch, evaluation and checkpoint round trip on the GPU.
"""

from __future__ import annotations

import numpy as np
import parity
import pytest

from bioplaus.backend import NUMPY, get_backend, gpu_available
from bioplaus.config import Config
from bioplaus.models import build_spec
from bioplaus.rules import VARIANTS, init_network, train_step

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")]


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step_agrees_with_numpy(variant, kind):
    gpu = get_backend("gpu")
    parity.assert_steps_agree(parity.step(gpu, variant, kind), parity.step(NUMPY, variant, kind), gpu.xp,
                              (variant, kind))


@pytest.mark.parametrize("kind", ["resnet", "wrn", "wrn-a"])
@pytest.mark.parametrize("variant", parity.RESIDUAL_VARIANTS)
def test_a_residual_step_agrees_with_numpy(variant, kind):
    """Within parity.RESIDUAL_STEP_TOL (float32 rounding near φ's kink in 17 batch-normed layers); the blocks
    themselves agree to 1e-10 in float64 (tests/test_residual_blocks.py, the cupy parameter)."""
    gpu = get_backend("gpu")
    parity.assert_steps_agree(parity.step(gpu, variant, kind), parity.step(NUMPY, variant, kind), gpu.xp,
                              (variant, kind), parity.RESIDUAL_STEP_TOL)


@pytest.mark.parametrize("kind", ["mlp", "conv", "resnet", "wrn"])
@pytest.mark.parametrize("variant", ["glob", "predsim", "predsim-bpf"])
def test_evaluation_agrees_with_numpy(variant, kind):
    """Eval mode: running BN statistics (moved away from 0/1 by a few train steps), no dropout."""
    parity.assert_evaluations_agree(parity.evaluation(get_backend("gpu"), variant, kind),
                                    parity.evaluation(NUMPY, variant, kind))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_no_host_transfer_inside_a_training_step(monkeypatch, kind):
    import cupy

    gpu = get_backend("gpu")
    cfg = parity.config("predsim-bpf", kind, dropout=0.1)
    spec = build_spec(cfg, (1, 28, 28), 10)
    net = init_network(spec, cfg, gpu)
    x = cupy.random.standard_normal((parity.N, 1, 28, 28), dtype=cupy.float32)
    y = cupy.random.randint(0, 10, parity.N)
    masks = [gpu.asarray(m) for m in parity.host_masks(cfg, spec)]
    train_step(net, cfg.variant, cfg.beta, x, y, masks, lambda i, g: None)  # kernels compiled, caches filled
    transfers = []

    def spy(name, real):
        def wrapped(*args, **kwargs):
            transfers.append(name)
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(cupy, "asnumpy", spy("asnumpy", cupy.asnumpy))
    for name in ("get", "item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(cupy.ndarray, name, spy(name, getattr(cupy.ndarray, name)))
    for _ in range(3):
        loss = train_step(net, cfg.variant, cfg.beta, x, y, masks, lambda i, g: None).loss
    assert transfers == [], transfers
    assert isinstance(loss, cupy.ndarray)


def _small_dataset():
    from bioplaus.data import load_dataset
    from bioplaus.data.dataset import Dataset

    ds = load_dataset("fashion-mnist-mini")
    return Dataset(ds.spec, ds.x_train[:1024], ds.y_train[:1024], ds.x_test[:512], ds.y_test[:512], ds.source)


def test_trainer_epoch_evaluate_and_checkpoint_round_trip(tmp_path):
    from bioplaus.checkpoint import load_checkpoint, save_checkpoint
    from bioplaus.train import Trainer

    gpu = get_backend("gpu")
    ds = _small_dataset()
    cfg = Config(variant="predsim", model="vgg6b", feat_mult=0.125, num_layers=1, num_hidden=64, dim_in_decoder=512,
                 epochs=2, probe_every=1).resolve()
    runs = {}
    for name, backend in (("gpu", gpu), ("cpu", NUMPY)):
        trainer = Trainer(cfg, backend, ds)
        stats = trainer.train_epoch()
        ev = trainer.evaluate()
        probe = trainer.probe()
        runs[name] = (trainer, stats, ev, probe)
    (tg, sg, eg, pg), (_tc, sc, ec, pc) = runs["gpu"], runs["cpu"]
    # one epoch of 8 steps from the same start: the same run to float32 rounding
    assert abs(sg["train_loss"] - sc["train_loss"]) < 1e-3 * max(1.0, sc["train_loss"])
    assert abs(eg["test_error"] - ec["test_error"]) <= 1.0  # percent: a few of 512 images may flip
    for name in pg["layers"]:
        assert abs(pg["layers"][name]["bp_angle"] - pc["layers"][name]["bp_angle"]) < 1.0
    # checkpoint: to the host and back into a fresh GPU trainer, identical; then both train on alike
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, tg.state_dict(), {"epoch": tg.epoch})
    state, meta = load_checkpoint(path)
    again = Trainer(cfg, gpu, ds)
    again.load_state_dict(state)
    assert again.epoch == tg.epoch == meta["epoch"] == 1
    for key, value in again.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    a, b = tg.train_epoch(), again.train_epoch()
    assert a["train_loss"] == b["train_loss"] and a["layers"] == b["layers"]  # deterministic on the device
