"""A researcher's own rule, defined here without editing the package (the README's worked example).

The rule ``pred-sign``: the pred head's error reaches h through sign(dec_W) instead of dec_W (sign
symmetry, Liao et al. 2016, applied to a block's local decoder): one small head class and one
``register`` call, then it trains through the ordinary run loop and lands in the ordinary log.
"""

from __future__ import annotations

import numpy as np
import pytest

from bioplaus import ops, rules
from bioplaus.heads import PredHead, Targets
from bioplaus.log import read_run
from bioplaus.runner import run


class SignPredHead(PredHead):
    """pred with sign symmetry:  δpool(h) = sign(dec_W)ᵀ · ∂L/∂logits   (NOT the gradient)."""

    def __init__(self) -> None:
        super().__init__(feedback=False)

    def backward(self, cache, weight, p, f):
        dlogits, dec_cache, shape = cache
        dlogits = weight * dlogits
        _, dW, db = ops.dense_backward(dlogits, dec_cache, need_dx=False)
        dflat = dlogits @ np.sign(p["dec_W"])  # NOT A GRADIENT: the decoder's signs carry the error
        return dflat.reshape(shape), {"dec_W": dW, "dec_b": db}


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
