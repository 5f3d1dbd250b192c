"""A researcher's own rule, defined here without editing the package (the README's worked example).

The rule ``pred-sign``: the pred head's error reaches h through sign(dec_W) instead of dec_W (sign
symmetry, Liao et al. 2016, applied to a block's local decoder): one small head class and one
``register`` call, then it trains through the ordinary run loop and lands in the ordinary log.

A head of one's own with a statistic no module names (``loss_activity``: an activity penalty beside pred)
declares it (``probes``): the trainer reduces it, the log writes it with its units, the NaN check covers
it, the analysis draws it and the split planner counts the head, none of them edited.
"""

from __future__ import annotations

import numpy as np
import pytest

from bioplaus import analysis, ops, rules
from bioplaus.heads import Head, HeadResult, PredHead, Targets
from bioplaus.log import read_run
from bioplaus.probes import MEAN, Probe
from bioplaus.runner import run


class SignPredHead(PredHead):
    """pred with sign symmetry:  δpool(h) = sign(dec_W)ᵀ · ∂L/∂logits   (NOT the gradient)."""

    def __init__(self) -> None:
        super().__init__(feedback=False)

    def backward(self, cache, weight, p, f):
        dlogits = weight * cache.dlogits  # PredCache(dlogits, dec, shape), a named cache
        _, dW, db = ops.dense_backward(dlogits, cache.dec, need_dx=False)
        dflat = dlogits @ np.sign(p["dec_W"])  # NOT A GRADIENT: the decoder's signs carry the error
        return dflat.reshape(cache.shape), {"dec_W": dW, "dec_b": db}


class ActivityHead(Head):
    """An activity penalty:  L = ½ mean(h²),  δh = w · h / h.size.  No weights of its own."""

    name = "activity"
    poison = 1.0  # the tests' switch: NaN makes the loss NaN (the error stays finite)

    def forward(self, h, t, p, f):
        loss = 0.5 * (h * h).mean() * h.dtype.type(self.poison)
        return HeadResult(loss, {"loss_activity": loss}, h)

    def backward(self, cache, weight, p, f):
        return cache * cache.dtype.type(weight / cache.size), {}

    def probes(self):
        return (Probe("loss_activity", "1", "half the mean squared activity of the block", MEAN, loss=True),)


@pytest.fixture
def pred_activity():
    head = ActivityHead()
    rules.register("pred-activity", rules.Rule("pred, and an activity penalty", (rules.PRED, head)))
    yield head
    del rules.RULES["pred-activity"]


@pytest.fixture
def pred_sign():
    rules.register("pred-sign", rules.Rule("pred with the error through sign(dec_W)", (SignPredHead(),),
                                           reference="Liao et al. (2016)"))
    yield "pred-sign"
    del rules.RULES["pred-sign"]


def test_a_rule_defined_outside_the_package_trains_and_logs(pred_sign, tmp_path):
    result = run({"variant": pred_sign, "num_layers": 2, "num_hidden": 64, "epochs": 2, "device": "cpu",
                  "probe_every": 2, "lr_decay_milestones": ()}, out=str(tmp_path / "sign.h5"))  # a constant rate
    assert result.status == "completed" and result.epochs == 2
    log = read_run(result.path)
    assert log.config.variant == "pred-sign"
    assert log.epochs["test_error"][-1] < 50  # chance is 90 %
    assert np.all(np.isfinite(log.layers["fc1"]["bp_angle"][-1:]))  # the probe compares it with backprop
    assert rules.get_rule(pred_sign).pred == "exact"


def test_its_error_is_the_sign_formula(pred_sign):
    rng = np.random.default_rng(0)
    h = rng.normal(size=(8, 6))
    y = rng.integers(0, 3, 8)
    p = {"dec_W": rng.normal(size=(3, 6)), "dec_b": np.zeros(3)}
    head = rules.get_rule(pred_sign).heads[0]
    _loss, _stats, cache = head.forward(h, Targets(None, y, rules.one_hot(y, 3, h.dtype)), p, {})
    dh, grads = head.backward(cache, 1.0, p, {})
    logits = h @ p["dec_W"].T
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    dlogits = (soft - np.eye(3)[y]) / 8
    np.testing.assert_allclose(dh, dlogits @ np.sign(p["dec_W"]), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["dec_W"], dlogits.T @ h, rtol=1e-12, atol=1e-15)


def test_a_head_of_ones_own_is_logged_drawn_checked_and_counted(pred_activity, tmp_path):
    from bioplaus.config import Config
    from bioplaus.models import build_spec
    from bioplaus.parallel import describe_parallel, plan

    settings = {"variant": "pred-activity", "num_layers": 2, "num_hidden": 32, "epochs": 2, "device": "cpu"}
    result = run(settings, out=str(tmp_path / "act.h5"))
    assert result.status == "completed"
    log = read_run(result.path)
    for split in ("train", "test"):
        series = log.layers["fc2"][f"{split}_loss_activity"]
        assert np.all(np.isfinite(series)) and np.all(series > 0)
    described = "half the mean squared activity of the block on the training batches"
    assert log.info["layers/fc1/train_loss_activity"] == ("1", described)
    assert "loss_activity" in [q.name for q in analysis.layer_quantities(log)]  # a panel of its own
    cfg = Config(**settings).resolve()  # the planner of --parallel layers counts the head (and does not crash)
    spec = build_spec(cfg, (1, 28, 28), 10)
    assert sum(plan(spec, cfg, 2)[0]) == 2 and "rank 1: fc2 + output layer" in describe_parallel(
        cfg, type("D", (), {"input_shape": (1, 28, 28), "num_classes": 10})(), 2, None)

    pred_activity.poison = float("nan")  # its loss becomes NaN: the run stops, and says where
    bad = run({**settings, "epochs": 1}, out=str(tmp_path / "bad.h5"))
    assert bad.status == "diverged" and "the fc1 local activity loss became nan" in bad.message
    assert read_run(bad.path).status == "diverged"
