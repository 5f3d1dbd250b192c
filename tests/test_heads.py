"""Local heads: each exact head's error and weight gradients are the float64 central differences of its
weighted loss; the feedback head's error is ``dlogits · B`` (and the exact one with ``B := dec_W``);
the records a head returns, its local predictor, its alignment measure and its initialisation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import numerical_grad, rel_error

from bioplaus.heads import HeadResult, LabelProjection, PredHead, SimHead, Targets, angle_degrees
from bioplaus.models import BlockSpec

K, T = 4, 6  # classes, label-projection size
N = 7
WEIGHT = 0.7  # a head scales its loss gradient by the rule's weight
Y_LABELS = np.array([0, 1, 2, 3, 1, 0, 2])


def one_hot(y):
    return np.eye(K)[y]


def targets(y=Y_LABELS):
    """What a supervised head compares with (the block's input is not read by these heads)."""
    return Targets(None, y, one_hot(y))


def head_arrays(head, shape, seed=0):
    """The head's parameters and fixed matrices for input of ``shape``, all random (zero decoders hide errors)."""
    rng = np.random.default_rng(seed)
    D = int(np.prod(shape[1:]))
    C = shape[1]
    p: dict = {}
    f = {"P": LabelProjection.init(K, T, rng)}
    if isinstance(head, PredHead):
        outs = T if head.feedback else K
        p = {"dec_W": 0.5 * rng.standard_normal((outs, D)), "dec_b": 0.5 * rng.standard_normal(outs)}
        if head.feedback:
            f["B"] = 0.5 * rng.standard_normal((outs, D))
    elif head.learned:
        p = {"sim_W": 0.5 * rng.standard_normal((C, C, 3, 3) if len(shape) == 4 else (C, C))}
    return p, f


def loss_of(head, h, p, f):
    return float(head.forward(h, targets(), p, f).loss)


EXACT = [PredHead(feedback=False), SimHead(learned=True), SimHead(learned=False),
         SimHead(learned=True, use_std=False), SimHead(learned=False, use_std=False)]
SHAPES = [(N, 9), (N, 5, 3, 3)]  # what a head reads: a dense h, or a conv map (C > 3, 3x3: S's std path)


# ------------------------------------------------------------------------------ exact gradients
@pytest.mark.parametrize("shape", SHAPES, ids=["dense", "conv"])
@pytest.mark.parametrize("head", EXACT, ids=repr)
def test_exact_head_backward_is_the_gradient_of_its_weighted_loss(head, shape):
    rng = np.random.default_rng(1)
    h = rng.standard_normal(shape)
    p, f = head_arrays(head, shape)
    p0 = {k: v.copy() for k, v in p.items()}
    result = head.forward(h, targets(), p, f)
    dh, grads = head.backward(result.cache, WEIGHT, p, f)
    assert dh.shape == h.shape and dh.dtype == np.float64
    assert set(grads) == set(p)

    def weighted_loss():
        return WEIGHT * loss_of(head, h, p, f)

    assert rel_error(dh, numerical_grad(weighted_loss, h)) < 1e-6
    for k in p:
        assert rel_error(grads[k], numerical_grad(weighted_loss, p[k])) < 1e-6, k
    assert all(np.array_equal(p[k], p0[k]) for k in p)  # a head never updates its own weights


@pytest.mark.parametrize("head", EXACT + [PredHead(feedback=True)], ids=repr)
def test_backward_is_linear_in_the_weight(head):
    h = np.random.default_rng(2).standard_normal(SHAPES[1])
    p, f = head_arrays(head, h.shape)

    def run(weight):
        return head.backward(head.forward(h, targets(), p, f).cache, weight, p, f)

    d1, g1 = run(1.0)
    d3, g3 = run(0.25)
    assert rel_error(d3, 0.25 * d1) < 1e-14
    assert all(rel_error(g3[k], 0.25 * g1[k]) < 1e-14 for k in g1)


# ------------------------------------------------------------------------------ feedback alignment
@pytest.mark.parametrize("shape", SHAPES, ids=["dense", "conv"])
def test_feedback_head_error_is_dlogits_times_B(shape):
    head = PredHead(feedback=True)
    h = np.random.default_rng(3).standard_normal(shape)
    p, f = head_arrays(head, shape)
    result = head.forward(h, targets(), p, f)
    dh, grads = head.backward(result.cache, WEIGHT, p, f)
    flat = h.reshape(N, -1)
    logits = flat @ p["dec_W"].T + p["dec_b"]  # (N, T)
    codes = (one_hot(Y_LABELS) @ f["P"] > 0).astype(float)  # (N, T)
    dlogits = (1 / (1 + np.exp(-logits)) - codes) / logits.size  # ∂ mean BCE / ∂ logits
    assert rel_error(dh, (WEIGHT * dlogits @ f["B"]).reshape(shape)) < 1e-12
    assert rel_error(dh, (WEIGHT * dlogits @ p["dec_W"]).reshape(shape)) > 0.1  # not the transpose
    bce = np.mean(np.logaddexp(0, logits) - logits * codes)
    assert abs(float(result.loss) - bce) < 1e-12

    def weighted_loss():  # the decoder's own weights still learn from their exact gradient
        return WEIGHT * loss_of(head, h, p, f)

    for k in ("dec_W", "dec_b"):
        assert rel_error(grads[k], numerical_grad(weighted_loss, p[k])) < 1e-6, k
    # with B := dec_W, feedback alignment is the exact gradient
    dh_exact, _ = head.backward(head.forward(h, targets(), p, f).cache, WEIGHT, p,
                                {**f, "B": p["dec_W"]})
    assert rel_error(dh_exact, numerical_grad(weighted_loss, h)) < 1e-6


# ------------------------------------------------------------------------------ records and statistics
@pytest.mark.parametrize("head", EXACT + [PredHead(feedback=True)], ids=repr)
def test_head_result_fields(head):
    h = np.random.default_rng(4).standard_normal(SHAPES[0])
    p, f = head_arrays(head, h.shape)
    result = head.forward(h, targets(), p, f)
    assert isinstance(result, HeadResult) and HeadResult._fields == ("loss", "stats", "cache")
    loss, stats, _ = result  # unpacks by position too
    assert isinstance(loss, np.ndarray) and loss.shape == () and np.isfinite(loss)
    if head.name == "pred":
        assert set(stats) == {"correct_pred", "loss_pred"} and stats["loss_pred"] is loss
        assert stats["correct_pred"].shape == () and 0 <= int(stats["correct_pred"]) <= N
    else:
        assert stats == {"loss_sim": loss}


def test_exact_pred_counts_argmax_hits():
    head = PredHead(feedback=False)
    h = np.random.default_rng(5).standard_normal((40, 9))
    y = np.random.default_rng(6).integers(0, K, 40)
    p, f = head_arrays(head, h.shape)
    stats = head.forward(h, targets(y), p, f).stats
    logits = h @ p["dec_W"].T + p["dec_b"]
    assert int(stats["correct_pred"]) == int(np.sum(np.argmax(logits, axis=1) == y))
    z = logits - logits.max(axis=1, keepdims=True)
    ce = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(40), y])
    assert abs(float(stats["loss_pred"]) - ce) < 1e-12


def test_feedback_pred_counts_the_most_likely_label_code():
    """The local predictor picks the class whose binary code is most likely under σ(logits)."""
    head = PredHead(feedback=True)
    h = np.random.default_rng(7).standard_normal((60, 9))
    y = np.random.default_rng(8).integers(0, K, 60)
    p, f = head_arrays(head, h.shape, seed=9)
    stats = head.forward(h, targets(y), p, f).stats
    logits = h @ p["dec_W"].T + p["dec_b"]  # (N, T)
    codes = LabelProjection.codes(f["P"])  # (K, T)
    log_s, log_1ms = -np.logaddexp(0, -logits), -np.logaddexp(0, logits)  # log σ, log(1 − σ)
    loglik = log_s @ codes.T + log_1ms @ (1 - codes).T  # (N, K): log p(code_c) under independent bits
    expect = int(np.sum(np.argmax(loglik, axis=1) == y))
    assert 0 < expect < 60  # a real mix of hits and misses
    assert int(stats["correct_pred"]) == expect


# ------------------------------------------------------------------------------ alignment
def test_alignment_gives_fa_angle_only_for_the_feedback_head():
    shape = SHAPES[0]
    for head in EXACT:
        p, f = head_arrays(head, shape)
        assert head.alignment(p, f) == {}
    head = PredHead(feedback=True)
    p, f = head_arrays(head, shape)
    got = head.alignment(p, f)
    assert set(got) == {"fa_angle"}
    a, b = p["dec_W"].ravel(), f["B"].ravel()
    expect = math.degrees(math.acos(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    assert abs(float(got["fa_angle"]) - expect) < 1e-9
    assert float(head.alignment(p, {**f, "B": p["dec_W"]})["fa_angle"]) < 1e-5
    assert abs(float(head.alignment(p, {**f, "B": -p["dec_W"]})["fa_angle"]) - 180) < 1e-5
    with np.errstate(invalid="ignore"):
        assert np.isnan(angle_degrees(np, np.zeros(3), np.ones(3)))  # the documented NaN for a zero array


# ------------------------------------------------------------------------------ initialisation
def test_init_shapes_and_bounds():
    rng = np.random.default_rng(10)
    conv, dense = (spec.kind.taps(spec)[0] for spec in (BlockSpec("conv1", "conv", 3, 8, 3, 1, 1, 4, dec_features=32),
                                                          BlockSpec("fc1", "dense", 20, 16, dec_features=16)))
    p, f = PredHead(feedback=False).init(dense, K, T, rng)
    assert f == {} and np.all(p["dec_W"] == 0) and p["dec_W"].shape == (K, 16)
    assert p["dec_b"].shape == (K,) and 0 < np.max(np.abs(p["dec_b"])) <= 1 / math.sqrt(16)
    p, f = PredHead(feedback=True).init(conv, K, T, rng)
    assert np.all(p["dec_W"] == 0) and p["dec_W"].shape == (T, 32) and np.all(p["dec_b"] == 0)
    assert f["B"].shape == (T, 32) and 0.5 / math.sqrt(32) < np.max(np.abs(f["B"])) <= 1 / math.sqrt(32)
    p, f = SimHead(learned=True).init(conv, K, T, rng)
    assert f == {} and p["sim_W"].shape == (8, 8, 3, 3) and np.max(np.abs(p["sim_W"])) <= 1 / math.sqrt(72)
    p, _ = SimHead(learned=True).init(dense, K, T, rng)
    assert p["sim_W"].shape == (16, 16) and np.max(np.abs(p["sim_W"])) <= 1 / math.sqrt(16)
    assert SimHead(learned=False).init(conv, K, T, rng) == ({}, {})
    P = LabelProjection.init(K, 500, rng)
    assert P.shape == (K, 500) and 0.9 / math.sqrt(K) < np.max(np.abs(P)) <= 1 / math.sqrt(K)
    assert np.array_equal(LabelProjection.codes(P), (P > 0).astype(P.dtype))


def test_head_flags():
    assert PredHead(feedback=False).uses_projection is False and PredHead(feedback=True).uses_projection is True
    assert SimHead(learned=True).reads_pooled is False and SimHead(learned=False).reads_pooled is True
    assert SimHead(learned=False).uses_projection is True and PredHead(feedback=False).reads_pooled is True


# ------------------------------------------------------------------------------ what a head declares
@pytest.mark.parametrize("head", [*EXACT, PredHead(feedback=True)], ids=repr)
@pytest.mark.parametrize("spec", [BlockSpec("conv1", "conv", 3, 8, 3, 1, 1, 4, dec_window=(2, 2), dec_features=32),
                                  BlockSpec("fc1", "dense", 20, 16, dec_features=16)], ids=["conv", "dense"])
def test_a_head_declares_its_arrays_statistics_and_cost(head, spec):
    """``shapes`` are init's; the per-batch probes read exactly the statistics forward gives, the others
    name what ``alignment`` gives; a step costs something."""
    (tap,) = spec.kind.taps(spec)
    p, f = head.init(tap, K, T, np.random.default_rng(0))
    assert head.shapes(tap, K, T) == ({k: v.shape for k, v in p.items()}, {k: v.shape for k, v in f.items()})
    h = np.random.default_rng(1).standard_normal((N, 8, 4, 4) if tap.spatial else (N, 16))
    read = h[:, :, ::2, ::2] if head.reads_pooled and tap.spatial else h  # the shape pool(h) has
    stats = head.forward(read, Targets(None, Y_LABELS, one_hot(Y_LABELS), tap=tap), p, {**f, "P": LabelProjection.init(
        K, T, np.random.default_rng(2))}).stats
    probes = head.probes()
    assert {probe.stat for probe in probes if probe.per_batch} == set(stats)
    with np.errstate(invalid="ignore"):  # a decoder starts at zero: its angle is NaN until it learns
        assert {probe.name for probe in probes if not probe.per_batch} == set(head.alignment(p, f))
    assert all(probe.loss == probe.name.startswith("loss_") for probe in probes)
    cost = head.cost(tap, N, K, T)
    assert cost.forward > 0 and cost.backward > 0
