"""Mini-batches on the device: shuffling, the paper's augmentation, normalisation.

Per channel c, with pixels p in 0..255 (the authors' torchvision ``ToTensor`` + ``Normalize``):

    x = (p / 255 - mean_c) / std_c            computed as  p * a_c + b_c,
    a_c = 1 / (255 std_c),  b_c = -mean_c / std_c   (float64 constants, float32 arithmetic)

Train-time augmentation, all drawn per sample on the host and applied on the device:

- random crop with padding P: the image is zero-padded by P on every side (once, when the data
  is uploaded) and an H x W window at offset (dy, dx), dy, dx uniform in {0, ..., 2P}, is kept;
- horizontal flip with probability 1/2 (of the cropped window);
- cutout of side L (after normalisation): rows [cy - L//2, cy + L//2) and columns
  [cx - L//2, cx + L//2), clipped to the image, set to 0, with (cy, cx) a uniform pixel.

Crop and flip are one gather: each output pixel's flat index into the padded array is
``n*C*Hp*Wp + c*Hp*Wp + (dy + i)*Wp + (dx + j')`` with ``j' = W-1-j`` when flipped, so there is
no per-sample Python loop and the same code runs on NumPy and CuPy.

Reproducibility: the order and every draw of epoch ``e`` come from
``np.random.default_rng(SeedSequence([seed, 0xDA7A, e]))`` alone, so a resumed run sees exactly
the batches an uninterrupted run would have seen, with no saved state.

Classes per batch (the authors' ``NClassRandomSampler`` idea, for the sim loss with many
classes): each batch draws k classes with probability proportional to how many of their
samples are still unused in the epoch, and is filled evenly with unused samples of those k
classes. When no k classes can fill a batch any more (the last few batches of the epoch), the
leftover samples are shuffled and batched normally. Every sample still appears exactly once
per epoch, and every batch but the last has ``batch_size`` samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .dataset import Dataset
from .registry import DataError

EPOCH_STREAM = 0xDA7A


def _whole(value, what: str, least: int) -> int:
    """``value`` as an int >= ``least`` (a float must be whole, e.g. 3.0; bools are refused)."""
    try:
        whole = int(value)
        ok = whole == value and whole >= least and not isinstance(value, (bool, np.bool_))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise DataError(f"{what} must be a whole number >= {least}, not {value!r}")
    return whole


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The host generator that fixes epoch ``epoch``'s order and augmentation draws."""
    seed, epoch = _whole(seed, "the seed", 0), _whole(epoch, "the epoch", 0)
    return np.random.default_rng(np.random.SeedSequence([int(seed), EPOCH_STREAM, int(epoch)]))


def normalization(spec, xp, dtype=np.float32):
    """Per-channel ``(a, b)`` with ``p * a + b == (p/255 - mean) / std``, shapes ``(1, C, 1, 1)``."""
    mean = np.asarray(spec.mean, np.float64)
    std = np.asarray(spec.std, np.float64)
    a = (1.0 / (255.0 * std)).reshape(1, -1, 1, 1)
    b = (-mean / std).reshape(1, -1, 1, 1)
    return xp.asarray(a, dtype=dtype), xp.asarray(b, dtype=dtype)


def normalize(x_u8, a, b):
    """uint8 ``(B, C, H, W)`` -> float32 normalised ``(B, C, H, W)``."""
    x = x_u8.astype(a.dtype)  # (B, C, H, W)
    x *= a
    x += b
    return x


def crop_flip_index(idx, dy, dx, flip, chw: tuple[int, int, int], pad: int, xp):
    """Flat indices into the padded ``(N, C, H+2P, W+2P)`` array for crop+flip, ``(B, C, H, W)``."""
    C, H, W = chw
    Hp, Wp = H + 2 * pad, W + 2 * pad
    i = xp.arange(H, dtype=xp.int64)
    j = xp.arange(W, dtype=xp.int64)
    rows = dy.astype(xp.int64)[:, None] + i[None, :]  # (B, H)
    jj = xp.where(flip[:, None], (W - 1) - j[None, :], j[None, :])  # (B, W)
    cols = dx.astype(xp.int64)[:, None] + jj  # (B, W)
    plane = xp.arange(C, dtype=xp.int64) * (Hp * Wp)  # (C,)
    start = idx.astype(xp.int64)[:, None] * (C * Hp * Wp) + plane[None, :]  # (B, C)
    return start[:, :, None, None] + (rows * Wp)[:, None, :, None] + cols[:, None, None, :]


def crop_flip(x_padded, idx, dy, dx, flip, chw: tuple[int, int, int], pad: int, xp):
    """Gather the crop+flip windows of samples ``idx`` from the padded uint8 images."""
    flat = crop_flip_index(idx, dy, dx, flip, chw, pad, xp)  # (B, C, H, W)
    return x_padded.reshape(-1).take(flat)  # (B, C, H, W)


def cutout(x, cy, cx, length: int, xp):
    """Zero one ``length``-sided square per sample, centred at ``(cy, cx)``, clipped."""
    _, _, H, W = x.shape
    half = length // 2
    i = xp.arange(H)
    j = xp.arange(W)
    in_rows = (i[None, :] >= (cy[:, None] - half)) & (i[None, :] < (cy[:, None] + half))  # (B, H)
    in_cols = (j[None, :] >= (cx[:, None] - half)) & (j[None, :] < (cx[:, None] + half))  # (B, W)
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
    return xp.where(hole, xp.zeros((), dtype=x.dtype), x)


def class_grouped_order(
    labels: np.ndarray, batch_size: int, k: int, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """A permutation of ``range(N)`` whose consecutive batches mostly hold exactly ``k`` classes."""
    n = len(labels)
    perm = rng.permutation(n)
    by_class = perm[np.argsort(labels[perm], kind="stable")]  # grouped by class, shuffled within
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    used = np.zeros(num_classes, np.int64)
    pieces = []
    for b in range(-(-n // batch_size)):
        size = min(batch_size, n - b * batch_size)
        remaining = counts - used  # (num_classes,)
        top = np.sort(remaining)[-k:]
        if top.sum() < size:
            break  # no k classes can fill this batch: the rest is batched without grouping
        alive = np.flatnonzero(remaining > 0)
        # k classes, weighted by unused samples, without replacement (Efraimidis-Spirakis keys)
        keys = np.log(rng.random(len(alive))) / remaining[alive]
        chosen = alive[np.argsort(-keys, kind="stable")[:k]]
        if remaining[chosen].sum() < size:
            chosen = np.argsort(-remaining, kind="stable")[:k]
        chosen = chosen[np.argsort(remaining[chosen], kind="stable")]  # fill smallest first
        need = size
        for slot, c in enumerate(chosen):
            take = min(int(remaining[c]), -(-need // (len(chosen) - slot)))
            s = starts[c] + used[c]
            pieces.append(by_class[s : s + take])
            used[c] += take
            need -= take
    rest = np.concatenate([by_class[starts[c] + used[c] : starts[c] + counts[c]] for c in range(num_classes)])
    pieces.append(rng.permutation(rest))
    return np.concatenate(pieces).astype(np.int64)


@dataclass(frozen=True)
class EpochPlan:
    """Host arrays of one epoch, aligned with the positions in ``order``."""

    order: np.ndarray  # (N,) sample indices
    dy: np.ndarray | None  # (N,) crop offsets, or None
    dx: np.ndarray | None
    flip: np.ndarray | None  # (N,) bool
    cy: np.ndarray | None  # (N,) cutout centres
    cx: np.ndarray | None


class TrainBatches:
    """Shuffled, augmented, normalised training mini-batches on ``backend``.

    The uint8 training images are uploaded once (zero-padded when cropping); each batch is
    gathered, augmented and normalised on the device. ``epoch(e)`` depends only on (seed, e).
    """

    def __init__(
        self,
        ds: Dataset,
        backend,
        batch_size: int,
        seed: int,
        augment: bool = True,
        cutout_length: int = 0,
        classes_per_batch: int = 0,
        classes_per_batch_until_epoch: int = 0,
    ) -> None:
        spec = ds.spec
        self.spec = spec
        self.backend = backend
        self.batch_size = _whole(batch_size, "batch_size", 1)
        self.seed = _whole(seed, "the seed", 0)
        self.pad = int(spec.crop_padding) if augment else 0
        self.hflip = bool(spec.hflip) and augment
        self.cutout_length = _whole(cutout_length, "cutout_length", 0)
        self.classes_per_batch = _whole(classes_per_batch, "classes_per_batch", 0)
        self.classes_per_batch_until_epoch = _whole(classes_per_batch_until_epoch, "classes_per_batch_until_epoch", 0)
        self.num_samples = len(ds.y_train)
        self._labels = np.asarray(ds.y_train, np.int64)
        xp = backend.xp
        x = backend.asarray(ds.x_train)  # (N, C, H, W) uint8, uploaded once
        if self.pad:
            p = self.pad
            x = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))  # (N, C, H+2P, W+2P)
        self._x = x
        self._y = backend.asarray(self._labels)  # (N,) int64, uploaded once
        self._a, self._b = normalization(spec, xp)

    def __len__(self) -> int:
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    def grouped(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` uses classes-per-batch grouping."""
        k = self.classes_per_batch
        until = self.classes_per_batch_until_epoch
        return 0 < k < self.spec.num_classes and (until == 0 or epoch <= until)

    def plan(self, epoch: int) -> EpochPlan:
        """The order and augmentation draws of epoch ``epoch`` (host arrays)."""
        rng = epoch_rng(self.seed, epoch)
        n = self.num_samples
        if self.grouped(epoch):
            order = class_grouped_order(
                self._labels, self.batch_size, self.classes_per_batch, self.spec.num_classes, rng
            )
        else:
            order = rng.permutation(n).astype(np.int64)
        dy = dx = flip = cy = cx = None
        if self.pad or self.hflip:
            dy, dx = rng.integers(0, 2 * self.pad + 1, size=(2, n))
            flip = rng.random(n) < 0.5 if self.hflip else np.zeros(n, bool)
        if self.cutout_length > 0:
            _, H, W = self.spec.input_shape
            cy = rng.integers(0, H, size=n)
            cx = rng.integers(0, W, size=n)
        return EpochPlan(order, dy, dx, flip, cy, cx)

    def epoch(self, epoch: int) -> Iterator[tuple]:
        """Yield ``(x, y)`` for every batch of 1-based epoch ``epoch``: float32 ``(B, C, H, W)``,
        int64 ``(B,)``, both on the backend; the last batch may be smaller."""
        xp = self.backend.xp
        plan = self.plan(epoch)
        up = self.backend.asarray
        order = up(plan.order)  # one host->device copy per array per epoch
        y_all = self._y[order]  # (N,)
        crop = plan.dy is not None
        if crop:
            dy, dx, flip = up(plan.dy), up(plan.dx), up(plan.flip)
        if plan.cy is not None:
            cy, cx = up(plan.cy), up(plan.cx)
        B = self.batch_size
        for start in range(0, self.num_samples, B):
            s = slice(start, start + B)
            idx = order[s]  # (B,)
            if crop:
                x_u8 = crop_flip(self._x, idx, dy[s], dx[s], flip[s], self.spec.input_shape, self.pad, xp)
            else:
                x_u8 = self._x[idx]  # (B, C, H, W)
            x = normalize(x_u8, self._a, self._b)  # (B, C, H, W) float32
            if plan.cy is not None:
                x = cutout(x, cy[s], cx[s], self.cutout_length, xp)
            yield x, y_all[s]


def eval_batches(ds: Dataset, backend, batch_size: int, split: str = "test") -> Iterator[tuple]:
    """``(x, y)`` batches of a split in file order, normalised, without augmentation."""
    batch_size = _whole(batch_size, "batch_size", 1)
    x_host, y_host = ds.split(split)
    xp = backend.xp
    x_all = backend.asarray(x_host)  # (N, C, H, W) uint8, uploaded once per call
    y_all = backend.asarray(np.asarray(y_host, np.int64))
    a, b = normalization(ds.spec, xp)
    for start in range(0, len(y_host), batch_size):
        yield normalize(x_all[start : start + batch_size], a, b), y_all[start : start + batch_size]
