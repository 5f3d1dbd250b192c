"""Batches: crop/flip/cutout against naive per-sample loops, determinism, coverage, classes per batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bioplaus.backend import NUMPY, get_backend, gpu_available
from bioplaus.data import Dataset, TrainBatches, eval_batches, get_spec
from bioplaus.data.batches import class_grouped_order, cutout


def _backends():
    params = [pytest.param(NUMPY, id="numpy")]
    marks = [pytest.mark.gpu] + ([] if gpu_available() else [pytest.mark.skip(reason="no GPU")])
    params.append(pytest.param("gpu", id="cupy", marks=marks))
    return params


@pytest.fixture(params=_backends())
def backend(request):
    return get_backend("gpu") if request.param == "gpu" else request.param


def fake_dataset(base="cifar10", n=50, hw=None, num_classes=None, labels=None, seed=0) -> Dataset:
    spec = get_spec(base)
    if hw is not None:
        spec = dataclasses.replace(spec, input_shape=(spec.input_shape[0], *hw))
    if num_classes is not None:
        spec = dataclasses.replace(spec, num_classes=num_classes, class_names=tuple(map(str, range(num_classes))))
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *spec.input_shape), dtype=np.uint8)
    y = labels if labels is not None else rng.integers(0, spec.num_classes, n)
    return Dataset(spec, x, np.asarray(y, np.int64), x[:7].copy(), np.asarray(y[:7], np.int64), "fake")


def norm(spec, x_u8):
    """Naive normalisation, float64: (p/255 - mean) / std per channel."""
    mean = np.asarray(spec.mean).reshape(-1, 1, 1)
    std = np.asarray(spec.std).reshape(-1, 1, 1)
    return (x_u8 / 255.0 - mean) / std


def collect(batches, epoch, backend):
    xs, ys = [], []
    for x, y in batches.epoch(epoch):
        assert isinstance(x, backend.xp.ndarray) and isinstance(y, backend.xp.ndarray)
        assert x.dtype == np.float32 and y.dtype == np.int64
        xs.append(backend.to_host(x))
        ys.append(backend.to_host(y))
    return xs, ys


def test_crop_and_flip_match_a_naive_per_sample_crop(backend):
    ds = fake_dataset("cifar10", n=37)
    tb = TrainBatches(ds, backend, batch_size=16, seed=3)
    plan = tb.plan(2)
    P = ds.spec.crop_padding
    assert plan.dy.min() >= 0 and plan.dy.max() <= 2 * P and plan.dx.max() <= 2 * P
    assert len(np.unique(plan.dy)) == 2 * P + 1 and 0 < plan.flip.mean() < 1  # all offsets and both flips used
    xs, ys = collect(tb, 2, backend)
    assert [len(y) for y in ys] == [16, 16, 5] == [len(x) for x in xs] and len(tb) == 3  # last partial kept
    x = np.concatenate(xs)
    for pos, n in enumerate(plan.order):
        padded = np.pad(ds.x_train[n], ((0, 0), (P, P), (P, P)))
        window = padded[:, plan.dy[pos] : plan.dy[pos] + 32, plan.dx[pos] : plan.dx[pos] + 32]
        if plan.flip[pos]:
            window = window[:, :, ::-1]
        np.testing.assert_allclose(x[pos], norm(ds.spec, window), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate(ys), ds.y_train[plan.order])


def test_flip_only_flips_and_no_augment_is_identity(backend):
    ds = fake_dataset("cifar10", n=40)
    ds = dataclasses.replace(ds, spec=dataclasses.replace(ds.spec, crop_padding=0))
    tb = TrainBatches(ds, backend, 64, seed=0)
    plan = tb.plan(1)
    (x,), _ = collect(tb, 1, backend)
    expected = norm(ds.spec, ds.x_train[plan.order])
    np.testing.assert_allclose(x[~plan.flip], expected[~plan.flip], atol=1e-5)
    np.testing.assert_allclose(x[plan.flip], expected[plan.flip][..., ::-1], atol=1e-5)
    assert 0 < plan.flip.sum() < 40
    assert not np.allclose(x[plan.flip], expected[plan.flip])  # flipping really changed something
    plain = TrainBatches(ds, backend, 64, seed=0, augment=False)
    p2 = plain.plan(1)
    assert p2.dy is None and p2.flip is None
    (x2,), _ = collect(plain, 1, backend)
    np.testing.assert_allclose(x2, norm(ds.spec, ds.x_train[p2.order]), atol=1e-5)


@pytest.mark.parametrize("length", [1, 4, 7, 16])
def test_cutout_zeroes_exactly_the_clipped_square(backend, length):
    xp = backend.xp
    rng = np.random.default_rng(length)
    x = rng.standard_normal((30, 3, 12, 10)).astype(np.float32) + 5  # no zeros to begin with
    cy, cx = rng.integers(0, 12, 30), rng.integers(0, 10, 30)
    cy[:3], cx[:3] = [0, 11, 5], [0, 9, 9]  # corners and edges: clipping
    out = backend.to_host(cutout(backend.asarray(x), backend.asarray(cy), backend.asarray(cx), length, xp))
    for n in range(30):
        want = x[n].copy()
        for i in range(12):
            for j in range(10):
                if cy[n] - length // 2 <= i < cy[n] + length // 2 and cx[n] - length // 2 <= j < cx[n] + length // 2:
                    want[:, i, j] = 0
        np.testing.assert_array_equal(out[n], want)


def test_cutout_in_batches_happens_after_normalisation(backend):
    ds = fake_dataset("kmnist", n=20)  # no crop/flip: only cutout
    tb = TrainBatches(ds, backend, 32, seed=1, cutout_length=6)
    plan = tb.plan(4)
    (x,), _ = collect(tb, 4, backend)
    zero = x == 0
    base = norm(ds.spec, ds.x_train[plan.order])
    for pos in range(20):
        rows = np.arange(28)[(np.arange(28) >= plan.cy[pos] - 3) & (np.arange(28) < plan.cy[pos] + 3)]
        cols = np.arange(28)[(np.arange(28) >= plan.cx[pos] - 3) & (np.arange(28) < plan.cx[pos] + 3)]
        hole = np.zeros((1, 28, 28), bool)
        hole[:, rows[:, None], cols[None, :]] = True
        assert np.array_equal(zero[pos], hole | (base[pos] == 0))
        np.testing.assert_allclose(x[pos][~hole], base[pos][~hole], atol=1e-5)


def test_same_seed_and_epoch_same_batches_other_epoch_or_seed_differs(backend):
    ds = fake_dataset("fashion-mnist", n=45)
    a = collect(TrainBatches(ds, backend, 10, seed=7, cutout_length=5), 3, backend)
    b = collect(TrainBatches(ds, backend, 10, seed=7, cutout_length=5), 3, backend)  # a "resumed" run
    for xa, xb in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(xa, xb)
    c = collect(TrainBatches(ds, backend, 10, seed=7, cutout_length=5), 4, backend)
    d = collect(TrainBatches(ds, backend, 10, seed=8, cutout_length=5), 3, backend)
    assert not np.array_equal(np.concatenate(a[1]), np.concatenate(c[1]))
    assert not np.array_equal(np.concatenate(a[0]), np.concatenate(d[0]))


def identity_dataset(n, num_classes, labels=None, seed=0):
    """Images that encode their own index in two pixels, so a batch says which samples it holds."""
    ds = fake_dataset("mnist", n=n, hw=(2, 2), num_classes=num_classes, labels=labels, seed=seed)
    x = np.zeros((n, 1, 2, 2), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return dataclasses.replace(ds, x_train=x, spec=dataclasses.replace(ds.spec, crop_padding=0))


def decode(spec, x):
    p = np.rint((x[:, 0, 0, :2] * spec.std[0] + spec.mean[0]) * 255).astype(int)
    return p[:, 0] * 256 + p[:, 1]


@pytest.mark.parametrize("k", [0, 3])
def test_every_sample_exactly_once_per_epoch(backend, k):
    ds = identity_dataset(1003, 10)
    tb = TrainBatches(ds, backend, 64, seed=2, classes_per_batch=k)
    xs, ys = collect(tb, 1, backend)
    assert len(xs) == len(tb) == 16 and [len(x) for x in xs] == [64] * 15 + [43]
    seen = np.concatenate([decode(ds.spec, x) for x in xs])
    assert sorted(seen) == list(range(1003))
    np.testing.assert_array_equal(np.concatenate(ys), ds.y_train[seen])


def test_classes_per_batch_mostly_exactly_k_never_more_before_the_tail(backend):
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(100), rng.integers(40, 60, 100)))  # uneven class sizes
    ds = identity_dataset(len(labels), 100, labels=labels)
    k, B = 20, 128
    tb = TrainBatches(ds, backend, B, seed=5, classes_per_batch=k, classes_per_batch_until_epoch=2)
    _, ys = collect(tb, 2, backend)
    distinct = np.array([len(np.unique(y)) for y in ys])
    assert len(ys) == len(tb)
    grouped = np.flatnonzero(distinct > k)
    tail_start = grouped.min() if len(grouped) else len(ys)
    assert len(ys) - tail_start <= 2  # only the last one or two batches mix freely
    assert np.all(distinct[:tail_start] <= k)
    assert np.mean(distinct == k) >= 0.9
    _, ys3 = collect(tb, 3, backend)  # past classes_per_batch_until_epoch: ordinary shuffling
    assert np.mean([len(np.unique(y)) for y in ys3]) > 60


def test_class_grouped_order_is_a_permutation_for_awkward_sizes():
    for n, classes, k, B in [(10, 3, 1, 4), (97, 7, 2, 10), (500, 10, 9, 33), (64, 2, 1, 64)]:
        labels = np.random.default_rng(n).integers(0, classes, n)
        order = class_grouped_order(labels, B, k, classes, np.random.default_rng(1))
        assert sorted(order.tolist()) == list(range(n))
        distinct = [len(np.unique(labels[order[i : i + B]])) for i in range(0, n, B)]
        mixed = [i for i, d in enumerate(distinct) if d > k]
        assert mixed == list(range(len(distinct) - len(mixed), len(distinct)))  # only a tail mixes classes
        if np.sort(np.bincount(labels))[-k:].sum() >= B:  # the first batch can be grouped: it is
            assert distinct[0] <= k


def test_eval_batches_fixed_order_no_augmentation(backend):
    ds = fake_dataset("cifar10", n=30)
    for split, (x_host, y_host) in (("test", (ds.x_test, ds.y_test)), ("train", (ds.x_train, ds.y_train))):
        got = list(eval_batches(ds, backend, 4, split=split))
        assert [len(y) for _, y in got][-1] == len(y_host) % 4 or len(y_host) % 4 == 0
        x = np.concatenate([backend.to_host(b[0]) for b in got])
        y = np.concatenate([backend.to_host(b[1]) for b in got])
        assert x.dtype == np.float32 and isinstance(got[0][0], backend.xp.ndarray)
        np.testing.assert_allclose(x, norm(ds.spec, x_host), atol=1e-5)
        np.testing.assert_array_equal(y, y_host)


def test_embedded_mini_batches_are_normalised_like_the_authors(backend):
    from bioplaus.data import load_dataset

    ds = load_dataset("fashion-mnist-mini")
    xs = [backend.to_host(x) for x, _ in eval_batches(ds, backend, 1000, split="train")]
    x = np.concatenate(xs)
    assert abs(x.mean()) < 0.1 and abs(x.std() - 1) < 0.1  # (p/255 - 0.286) / 0.353 on real images
