"""What each layer has learned, comparable across layers, rules and runs: linear probes, linear CKA, the
alignment of a layer's similarity matrix with the labels', and effective dimensionality.

The slides end on "why does local learning work?". These measures look at a layer's features ``X (N, D)``
(one row per sample, a block's output flattened) on fixed inputs, whatever rule trained it:

**Linear probe** (Alain & Bengio 2016, "Understanding intermediate layers using linear classifier
probes"): how linearly separable the classes are in ``X``. Closed-form ridge regression to one-hot targets
on a training subset, scored by the argmax's accuracy on a test subset::

    Xc = X - mean(X_train),  Yc = Y - mean(Y_train)                (centred: the intercept is the means)
    W  = Xcᵀ (Xc Xcᵀ + λ I)⁻¹ Yc  =  (Xcᵀ Xc + λ I)⁻¹ Xcᵀ Yc        (dual form, primal form: the same W)
    λ  = RIDGE · tr(Xc Xcᵀ) / N_train                              (RIDGE = 1e-2 of the mean squared norm)

``λ`` scales with the features, so the probe's accuracy does not change when a layer's features are scaled.
The dual form is taken when ``D > N_train`` (convolutional features), so one probe costs
``O(N_train · D · min(N_train, D))``: bounded by the fixed number of samples. Nothing is random.

**Linear CKA** (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of neural network representations
revisited", eq. 5): the similarity of two representations ``X (N, D1)``, ``Z (N, D2)`` of the same N inputs::

    CKA(X, Z) = ‖Zcᵀ Xc‖²_F / (‖Xcᵀ Xc‖_F · ‖Zcᵀ Zc‖_F)  =  <Kx, Kz>_F / (‖Kx‖_F ‖Kz‖_F),  K = Xc Xcᵀ

1 for X with itself, invariant to orthogonal transforms and isotropic scaling of either side (not to
arbitrary invertible linear maps). All pairs of layers are computed from the centred Gram matrices at once.

**Label alignment**: the quantity the sim loss optimises (DESIGN §1): ``S(h)``, the cosine-similarity
matrix of a layer's (centred, per-channel standardised) features, against ``S(Y)`` of the one-hot labels;
reported as the mean squared difference (the sim loss itself) and as the Pearson correlation of the two
matrices' off-diagonal entries.

**Effective dimensionality** (participation ratio; Gao et al. 2017, "A theory of multineuronal
dimensionality"): with ``λ_i`` the eigenvalues of the covariance of ``X``::

    PR(X) = (Σ λ_i)² / Σ λ_i²  =  tr(C)² / ‖C‖²_F

D for isotropic data in D dimensions, 1 for data on a line; computed from the Gram matrix when ``D > N``
(same nonzero eigenvalues).

Every function takes NumPy or CuPy arrays (``xp`` from the arrays) and computes in float64; the results
are host floats or NumPy arrays. The engine's probe (``--probe-every``, :func:`bioplaus.train.probe`) and
:mod:`bioplaus.analysis` both call these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bioplaus.backend import get_array_module

RIDGE = 1e-2  # the probe's ridge strength, relative to the mean squared norm of the centred training features
PROBE_TRAIN = 1024  # the probe's training subset: the first training images, no augmentation
PROBE_TEST = 512  # the probe's test subset: the first test images


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _flat64(X):
    """``X (N, ...)`` as ``(N, D)`` float64."""
    xp = get_array_module(X)
    return xp.asarray(X, dtype=xp.float64).reshape(X.shape[0], -1)


def _centred(X):
    X = _flat64(X)
    return X - X.mean(axis=0, keepdims=True)  # (N, D)


def gram(X):
    """The centred Gram matrix ``Xc Xcᵀ (N, N)`` of ``X (N, ...)``, float64."""
    Xc = _centred(X)
    return Xc @ Xc.T  # (N, N)


# ---------------------------------------------------------------------- linear probes
PROBE_COLUMNS = 1 << 14  # feature columns the dual probe turns into float64 at a time (1,024 × 16,384: 128 MB)


def ridge_probe(X_train, y_train, X_test, y_test, num_classes: int | None = None, ridge: float = RIDGE) -> float:
    """Test accuracy in % of a ridge-regression linear probe (module docstring) trained on
    ``(X_train (N, ...), y_train (N,))`` and scored on ``(X_test (M, ...), y_test (M,))``.

    With more features than samples (a conv block's maps) the dual form needs only ``Xc Xcᵀ (N, N)`` and
    ``Tc Xcᵀ (M, N)``: they are summed over :data:`PROBE_COLUMNS` feature columns at a time, so the features
    are never held in float64 whole (a 131,072-feature map: 1 GB each for the training and centred copies)."""
    xp = get_array_module(X_train)
    X_train, X_test = xp.asarray(X_train), xp.asarray(X_test)
    n, m = X_train.shape[0], X_test.shape[0]
    Xr, Tr = X_train.reshape(n, -1), X_test.reshape(m, -1)  # (N, D), (M, D): views, the caller's dtype
    d = Xr.shape[1]
    y = xp.asarray(y_train).astype(xp.int64)
    k = int(num_classes) if num_classes is not None else int(max(_host(y).max(), _host(y_test).max())) + 1
    Y = (y[:, None] == xp.arange(k)[None, :]).astype(xp.float64)  # (N, K)
    Yc = Y - Y.mean(axis=0, keepdims=True)  # (N, K)
    if d > n:  # dual: W = Xcᵀ (Xc Xcᵀ + λI)⁻¹ Yc, scores = Tc W = (Tc Xcᵀ) (Xc Xcᵀ + λI)⁻¹ Yc
        G = xp.zeros((n, n))
        C = xp.zeros((m, n))
        for j in range(0, d, PROBE_COLUMNS):
            Xj = Xr[:, j : j + PROBE_COLUMNS].astype(xp.float64)  # a copy, also of float64 features
            mj = Xj.mean(axis=0, keepdims=True)
            Xj -= mj  # centred by the training features' mean, the test features too
            G += Xj @ Xj.T
            C += (xp.asarray(Tr[:, j : j + PROBE_COLUMNS], dtype=xp.float64) - mj) @ Xj.T
        scale = float(_host(xp.trace(G))) / n  # the mean squared norm of a centred training feature vector
        lam = ridge * scale if scale > 0 else 1.0
        scores = C @ xp.linalg.solve(G + lam * xp.eye(n), Yc)  # (M, K)
    else:  # primal: W = (Xcᵀ Xc + λI)⁻¹ Xcᵀ Yc
        X, T = _flat64(X_train), _flat64(X_test)
        mx = X.mean(axis=0, keepdims=True)
        Xc = X - mx
        scale = float(_host((Xc * Xc).sum())) / n
        lam = ridge * scale if scale > 0 else 1.0
        W = xp.linalg.solve(Xc.T @ Xc + lam * xp.eye(d), Xc.T @ Yc)  # (D, K)
        scores = (T - mx) @ W  # (M, K)
    pred = scores.argmax(axis=1)
    return 100.0 * float(_host((pred == xp.asarray(y_test)).mean()))


# ---------------------------------------------------------------------- CKA
def linear_cka(X, Z) -> float:
    """Linear CKA of two representations ``X (N, ...)``, ``Z (N, ...)`` of the same N inputs (module
    docstring): in [0, 1], 1 when one is an orthogonal transform and scaling of the other."""
    if X.shape[0] != Z.shape[0]:
        raise ValueError(f"CKA compares representations of the same inputs: {X.shape[0]} rows against {Z.shape[0]}")
    Kx, Kz = gram(X), gram(Z)  # (N, N)
    num = (Kx * Kz).sum()
    den = get_array_module(Kx).sqrt((Kx * Kx).sum() * (Kz * Kz).sum())
    return float(_host(num / den))


def cka_matrix(A: Sequence, B: Sequence | None = None) -> np.ndarray:
    """Linear CKA between every layer of ``A`` and every layer of ``B`` (lists of ``(N, ...)`` features of
    the same N inputs; ``B`` defaults to ``A``): ``(len(A), len(B))``. Vectorised: each layer's centred Gram
    matrix is computed once and normalised, and all pairs are one matrix product of the flattened Grams."""
    B = A if B is None else B
    if not A or not B:
        raise ValueError("CKA needs at least one layer on each side")
    rows = {x.shape[0] for x in (*A, *B)}
    if len(rows) != 1:
        raise ValueError(f"CKA compares representations of the same inputs, not of {sorted(rows)} rows")
    xp = get_array_module(A[0])

    def normed(layers):
        K = xp.stack([gram(x).ravel() for x in layers])  # (L, N*N)
        return K / xp.linalg.norm(K, axis=1, keepdims=True)

    Ka = normed(A)
    Kb = Ka if B is A else normed(B)
    return _host(Ka @ Kb.T)  # (L_A, L_B)


# ---------------------------------------------------------------------- label similarity
def similarity(X):
    """``S(X) (N, N)``: the cosine similarity of the centred (and, for feature maps, per-channel
    standardised) rows of ``X``, as the sim loss computes it (:func:`bioplaus.ops.similarity_forward`)."""
    from bioplaus import ops

    xp = get_array_module(X)
    S, _ = ops.similarity_forward(xp.asarray(X, dtype=xp.float64))  # (N, N)
    return S


def label_alignment(X, y, num_classes: int | None = None) -> dict[str, float]:
    """How close a layer's similarity matrix ``S(h)`` is to the labels' ``S(Y)`` on the same inputs
    (``X (N, ...)``, ``y (N,)``): ``sim_loss``, their mean squared difference (the sim loss, DESIGN §1), and
    ``correlation``, the Pearson correlation of their off-diagonal entries (1: same structure)."""
    xp = get_array_module(X)
    y = xp.asarray(y).astype(xp.int64)
    k = int(num_classes) if num_classes is not None else int(_host(y).max()) + 1
    Y = (y[:, None] == xp.arange(k)[None, :]).astype(xp.float64)  # (N, K)
    Sh, Sy = similarity(X), similarity(Y)  # (N, N)
    n = Sh.shape[0]
    off = ~xp.eye(n, dtype=bool)
    a, b = Sh[off], Sy[off]
    a, b = a - a.mean(), b - b.mean()
    corr = (a * b).sum() / xp.sqrt((a * a).sum() * (b * b).sum())
    return {"sim_loss": float(_host(((Sh - Sy) ** 2).mean())), "correlation": float(_host(corr))}


# ---------------------------------------------------------------------- effective dimensionality
def participation_ratio(X) -> float:
    """Effective dimensionality of ``X (N, ...)``: ``tr(C)² / ‖C‖²_F`` of its feature covariance ``C``
    (module docstring); from the ``(N, N)`` Gram matrix when the features outnumber the samples."""
    Xc = _centred(X)
    C = Xc @ Xc.T if Xc.shape[1] > Xc.shape[0] else Xc.T @ Xc  # same nonzero eigenvalues, smaller side
    xp = get_array_module(C)
    tr = xp.trace(C)
    return float(_host(tr * tr / (C * C).sum()))
