"""The representation measures of :mod:`bioplaus.represent`: linear CKA's invariances and its vectorised
all-pairs form against a loop, the ridge probe on separable data, the participation ratio on data of known
dimension, and the label alignment at its extremes."""

from __future__ import annotations

import numpy as np
import pytest

from bioplaus import represent


def _rng(key: int = 0) -> np.random.Generator:
    return np.random.default_rng(key)


def _orthogonal(d: int, rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))  # (d, d), Qᵀ Q = I


def _cka_by_definition(X, Z) -> float:
    """Kornblith et al. eq. 5 written out in features: ‖Zcᵀ Xc‖² / (‖Xcᵀ Xc‖ ‖Zcᵀ Zc‖)."""
    Xc, Zc = X - X.mean(0), Z - Z.mean(0)
    return np.linalg.norm(Zc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Zc.T @ Zc))


def test_cka_of_a_representation_with_itself_is_one():
    X = _rng().standard_normal((40, 7))
    assert represent.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    rng = _rng(1)
    X, Z = rng.standard_normal((50, 6)), rng.standard_normal((50, 9))
    base = represent.linear_cka(X, Z)
    assert base < 0.9  # unrelated data: far from 1, so the equalities below could fail
    Q = _orthogonal(6, rng)
    assert represent.linear_cka(X @ Q, Z) == pytest.approx(base, rel=1e-10)
    assert represent.linear_cka(3.5 * X, 0.01 * Z) == pytest.approx(base, rel=1e-10)
    assert represent.linear_cka(X, Z) == pytest.approx(_cka_by_definition(X, Z), rel=1e-10)
    assert represent.linear_cka(X @ Q * 2.0, X) == pytest.approx(1.0, abs=1e-12)
    A = rng.standard_normal((6, 6))  # not orthogonal: CKA is not invariant to every invertible map
    assert abs(represent.linear_cka(X @ A, X) - 1.0) > 1e-3


def test_all_pairs_cka_equals_a_loop_over_pairs():
    rng = _rng(2)
    A = [rng.standard_normal((30, d)) for d in (4, 12, 50)]
    B = [rng.standard_normal((30, 1, 3, 3)), A[1] @ _orthogonal(12, rng)]  # feature maps are flattened
    got = represent.cka_matrix(A, B)
    want = np.array([[represent.linear_cka(a, b) for b in B] for a in A])
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert got[1, 1] == pytest.approx(1.0)
    square = represent.cka_matrix(A)
    np.testing.assert_allclose(np.diag(square), 1.0)
    np.testing.assert_allclose(square, square.T, rtol=1e-12)


def test_cka_refuses_representations_of_different_inputs():
    with pytest.raises(ValueError, match="same inputs"):
        represent.cka_matrix([np.zeros((4, 2))], [np.zeros((5, 2))])
    with pytest.raises(ValueError, match="same inputs"):
        represent.linear_cka(np.zeros((4, 2)), np.zeros((5, 2)))


def _separable(n: int, rng, d: int = 20, k: int = 4):
    """k classes, each a tight cluster around its own far-away centre: linearly separable."""
    centres = 10.0 * rng.standard_normal((k, d))
    y = np.arange(n) % k
    return centres[y] + 0.1 * rng.standard_normal((n, d)), y


@pytest.mark.parametrize("d", [20, 300])  # primal (D < N) and dual (D > N) form
def test_ridge_probe_reaches_100_percent_on_linearly_separable_data(d):
    rng = _rng(3)
    X, y = _separable(200, rng, d)
    T, t = X[:100], y[:100]
    X, y = X[100:], y[100:]
    assert represent.ridge_probe(X, y, T, t, num_classes=4) == 100.0
    assert represent.ridge_probe(1e3 * X, y, 1e3 * T, t) == 100.0  # the ridge scales with the features


def test_ridge_probe_is_at_chance_on_labels_it_cannot_see():
    rng = _rng(4)
    X = rng.standard_normal((400, 5))
    y = rng.integers(0, 4, 400)  # labels independent of the features
    acc = represent.ridge_probe(X[:200], y[:200], X[200:], y[200:], num_classes=4)
    assert acc < 45.0  # chance is 25 %


def test_primal_and_dual_probe_agree():
    rng = _rng(5)
    X, y = _separable(60, rng, d=50)
    X += 3.0 * rng.standard_normal(X.shape)  # noisy: not every test sample right, so the scores matter
    wide = np.concatenate([X, np.zeros((60, 30))], axis=1)  # 80 features > 40 samples: the dual form
    assert represent.ridge_probe(X[:40], y[:40], X[40:], y[40:]) == represent.ridge_probe(
        wide[:40], y[:40], wide[40:], y[40:])


def test_the_dual_probe_in_column_chunks_is_the_whole_dual_form(monkeypatch):
    """The dual probe sums Xc Xcᵀ and Tc Xcᵀ over chunks of feature columns: its scores are the one-shot
    dual form's (written out here from the module's definition), whatever the chunk, float32 input included."""
    rng = _rng(8)
    X, y = _separable(90, rng, d=70)
    X = (X + 40.0 * rng.standard_normal(X.shape)).astype(np.float32).reshape(90, 7, 10)  # maps, noisy
    train, test = X[:30], X[30:]

    def one_shot():
        Xc = train.reshape(30, -1).astype(np.float64)
        mx = Xc.mean(axis=0, keepdims=True)
        Xc = Xc - mx
        Y = np.eye(4)[y[:30]]
        Yc = Y - Y.mean(axis=0, keepdims=True)
        lam = represent.RIDGE * float((Xc * Xc).sum()) / 30
        A = np.linalg.solve(Xc @ Xc.T + lam * np.eye(30), Yc)
        pred = ((test.reshape(60, -1) - mx) @ (Xc.T @ A)).argmax(axis=1)
        return 100.0 * float((pred == y[30:]).mean())

    expected = one_shot()
    assert 30.0 < expected < 100.0  # noisy enough that the scores decide
    for columns in (1, 7, 16, 70, 1 << 14):
        monkeypatch.setattr(represent, "PROBE_COLUMNS", columns)
        assert represent.ridge_probe(train, y[:30], test, y[30:], num_classes=4) == expected, columns
        wide = train.astype(np.float64)  # float64 features: centred in a copy, the caller's array untouched
        kept = wide.copy()
        assert represent.ridge_probe(wide, y[:30], test, y[30:], num_classes=4) == expected, columns
        assert np.array_equal(wide, kept)


def test_participation_ratio_of_isotropic_data_is_its_dimension_and_of_a_line_is_one():
    rng = _rng(6)
    Q = _orthogonal(8, rng)
    X = np.concatenate([np.eye(8), -np.eye(8)]) @ Q  # exactly isotropic covariance, rotated
    assert represent.participation_ratio(X) == pytest.approx(8.0, rel=1e-12)
    line = rng.standard_normal((30, 1)) * rng.standard_normal((1, 12))  # rank 1
    assert represent.participation_ratio(line) == pytest.approx(1.0, rel=1e-10)
    assert represent.participation_ratio(line.T) == pytest.approx(1.0, rel=1e-10)  # more features than rows
    assert 1.0 < represent.participation_ratio(rng.standard_normal((100, 8)) * np.arange(1, 9)) < 8.0


def test_label_alignment_of_the_labels_themselves_and_of_noise():
    rng = _rng(7)
    y = np.arange(40) % 5
    one_hot = np.eye(5)[y]
    exact = represent.label_alignment(one_hot * 2.0, y)
    assert exact["sim_loss"] == pytest.approx(0.0, abs=1e-12)
    assert exact["correlation"] == pytest.approx(1.0, abs=1e-12)
    noise = represent.label_alignment(rng.standard_normal((40, 16)), y)
    assert noise["sim_loss"] > 0.05 and abs(noise["correlation"]) < 0.3
