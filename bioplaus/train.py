"""The sequential trainer: a network's stages in one process, the epoch loop, evaluation, the probe.

The trainer owns the order of work: each mini-batch flows through the stages (:mod:`bioplaus.stage`)
in turn, each stage updating its own blocks; the rules (:mod:`bioplaus.rules`) say where errors come
from; the run loop (:mod:`bioplaus.runner`) feeds the log and the checkpoints. Statistics stay on the
device during an epoch and reach the host once, at its end.

Randomness is keyed by (seed, epoch): epoch e's batch order, augmentation and every block's
dropout masks depend only on the seed and e, so a run resumed from an epoch boundary redraws
exactly what an uninterrupted run would have drawn, and a split into stages draws what one
stage would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from bioplaus import ops
from bioplaus.backend import TRAIN_DTYPE, Backend, get_array_module
from bioplaus.blocks import Blocks
from bioplaus.checkpoint import describe_mismatch
from bioplaus.config import Config
from bioplaus.describe import describe_model
from bioplaus.heads import angle_degrees
from bioplaus.models import NetSpec, build_spec
from bioplaus.probes import PROBE, Probe
from bioplaus.represent import PROBE_TEST, PROBE_TRAIN, ridge_probe
from bioplaus.rules import REFERENCE_RULE, compose, declared_probes, one_hot, train_step
from bioplaus.stage import Stage

PROBE_SIZE = 128
BP_ANGLE = Probe("bp_angle", "degrees", "angle between the block's update and the true backprop gradient on the "
                 "probe batch", PROBE)  # NaN on epochs without a probe
LINEAR_PROBE = Probe("probe_accuracy", "%", "test accuracy of a linear probe on the block's frozen output (ridge "
                     f"regression to one-hot labels, first {PROBE_TRAIN} training and {PROBE_TEST} test images)",
                     PROBE)  # NaN on epochs without a probe
FEATURE_CHUNK = 256  # images per eval forward of the linear probe's features (bounds its memory)


class Diverged(RuntimeError):
    """A loss became NaN or infinite; the message names the epoch and the layer."""

    def __init__(self, epoch: int, layer: str, value: float):
        self.epoch, self.layer, self.value = epoch, layer, value
        super().__init__(f"training diverged in epoch {epoch}: the {layer} loss became {value}")


def split_bounds(num_blocks: int, sizes: Sequence[int] | None) -> list[tuple[int, int]]:
    """``[(first, stop), ...]`` for stages of ``sizes`` blocks each (one stage of every block by default)."""
    if not sizes:
        return [(0, num_blocks)]
    if sum(sizes) != num_blocks or min(sizes) < 1:
        raise ValueError(f"stages of {list(sizes)} blocks do not split a network of {num_blocks} blocks")
    bounds, first = [], 0
    for n in sizes:
        bounds.append((first, first + n))
        first += n
    return bounds


def whole_network(nets: Sequence[Blocks]) -> Blocks:
    """One view of the whole network over consecutive stages' blocks (shared, not copied)."""
    if len(nets) == 1:
        return nets[0]
    return Blocks([b for n in nets for b in n.blocks], 0, nets[-1].out, nets[0].slope, nets[0].num_classes)


def run_series(spec: NetSpec, cfg) -> dict[str, tuple[Probe, ...]]:
    """Every statistic a run of ``cfg`` records, by layer: what its blocks, heads and carriers declare
    (:func:`bioplaus.rules.declared_probes`), and the probe's angle and linear-probe accuracy when
    ``--probe-every`` is on."""
    series = declared_probes(spec, compose(cfg))
    if cfg.probe_every:
        for b in spec.blocks:
            series[b.name] = (*series.get(b.name, ()), BP_ANGLE, LINEAR_PROBE)
    return series


class TrainerBase:
    """What the run loop (:mod:`bioplaus.runner`) reads of a trainer, whatever runs its stages: names,
    sizes, the training batches and the probe batch (subclasses set ``cfg, backend, dataset, spec``)."""

    def _setup(self, cfg: Config, backend: Backend, dataset) -> None:
        from bioplaus.data import TrainBatches

        self.cfg, self.backend, self.xp, self.dataset = cfg, backend, backend.xp, dataset
        self.spec = build_spec(cfg, dataset.spec.input_shape, dataset.spec.num_classes)
        self.batches = TrainBatches(
            dataset, backend, cfg.batch_size, cfg.seed, augment=True,
            cutout_length=cfg.cutout_length if cfg.cutout else 0,
            classes_per_batch=cfg.classes_per_batch,
            classes_per_batch_until_epoch=cfg.classes_per_batch_until_epoch)
        self.epoch = 0
        self._probe_batch = None
        self._probe_sets = None

    @property
    def layer_names(self) -> list[str]:
        return [b.name for b in self.spec.blocks] + ["out"]

    @property
    def num_parameters(self) -> int:
        return self.spec.num_parameters

    @property
    def series(self) -> dict[str, tuple[Probe, ...]]:
        """What the run records, by layer of the log (:func:`run_series`)."""
        return run_series(self.spec, self.cfg)

    def probe_batch(self):
        """A fixed batch of test images (up to 128, sorted by class), no augmentation."""
        if self._probe_batch is None:
            self._probe_batch = probe_batch(self.dataset, self.backend)
        return self._probe_batch

    def probe_sets(self):
        """The linear probe's fixed images: ``(x_train, y_train, x_test, y_test)`` (:func:`probe_sets`)."""
        if self._probe_sets is None:
            self._probe_sets = probe_sets(self.dataset, self.backend)
        return self._probe_sets

    def expected_state(self) -> dict[str, tuple[tuple, str]]:
        """Name -> (shape, dtype) of every array of the state dict."""
        return {k: (v.shape, str(v.dtype)) for k, v in self.state_dict().items()}


class Trainer(TrainerBase):
    """Trains one network under one variant, its stages one after another in this process.

    ``stages``: block counts per stage (one stage of the whole network by default); any split of a
    local rule gives the same numbers bit for bit.
    """

    def __init__(self, cfg: Config, backend: Backend, dataset, dtype=TRAIN_DTYPE, stages: Sequence[int] | None = None):
        self._setup(cfg, backend, dataset)
        self.rule = compose(cfg)
        self.stages = [Stage(cfg, self.spec, backend, a, b, dtype) for a, b in split_bounds(len(self.spec.blocks), stages)]

    @property
    def net(self) -> Blocks:
        """The whole network (a view over the stages' arrays)."""
        return whole_network([s.net for s in self.stages])

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        return describe_model(self.cfg, self.dataset.spec.input_shape, self.dataset.spec.num_classes)

    # ------------------------------------------------------------------ training
    def train_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict:
        """Train epoch ``self.epoch + 1``; returns its statistics as host floats."""
        epoch = self.epoch + 1
        start = time.perf_counter()
        for stage in self.stages:
            stage.begin_epoch(epoch)
        total = self.batches.num_samples
        done = 0
        for x, y in self.batches.epoch(epoch):
            o = x
            for stage in self.stages:
                o = stage.train_step(o, y)
            done += x.shape[0]
            if on_batch is not None:
                on_batch(done, total)
        values = {}
        for stage in self.stages:
            values.update(stage.epoch_values(train=True))
        self.epoch = epoch
        series = self.series
        result = epoch_result(epoch, self.stages[0].lr, self.to_host(values), total, time.perf_counter() - start,
                              series)
        check_finite(result, series)
        return result

    def to_host(self, values: dict) -> dict:
        """One device->host transfer for a whole pass's statistics."""
        return values_to_host(self.backend, values)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split: str = "test") -> dict:
        """Eval-mode BN, no dropout, the output layer's prediction; local predictors too."""
        from bioplaus.data import eval_batches

        for stage in self.stages:
            stage.begin_eval()
        total = 0
        for x, y in eval_batches(self.dataset, self.backend, max(self.cfg.batch_size, 256), split=split):
            o = x
            for stage in self.stages:
                o = stage.eval_step(o, y)
            total += x.shape[0]
        values = {}
        for stage in self.stages:
            values.update(stage.epoch_values(train=False))
        return eval_result(self.to_host(values), total, self.series)

    # ------------------------------------------------------------------ probe
    def probe(self) -> dict:
        """The angle of each block's update to backprop's, and S(h), on the probe batch (:func:`probe`)."""
        x, y = self.probe_batch()
        return probe(self.net, self.cfg, self.backend, x, y, self.probe_sets())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to continue: every stage's arrays keyed by block name (parameters, fixed
        matrices, BN statistics, optimizer states) and the number of completed epochs (random streams
        are keyed by epoch)."""
        out: dict[str, np.ndarray] = {"epoch": np.asarray(self.epoch)}
        for stage in self.stages:
            out.update(stage.state_dict())
        return out

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a checkpoint of this network, any split); ValueError names a mismatch."""
        problem = describe_mismatch(state, self.expected_state())
        if problem:
            raise ValueError(f"the checkpoint does not fit this network: {problem}")
        for stage in self.stages:
            stage.load_state_dict(state)
        self.epoch = int(state["epoch"])


# ---------------------------------------------------------------------- shared with the pipeline
def values_to_host(backend: Backend, values: dict) -> dict:
    """Device values (0-d arrays or numbers) -> host floats, in one transfer."""
    xp = backend.xp
    keys = list(values)
    if not keys:
        return {}
    arr = backend.to_host(xp.stack([xp.asarray(values[k], dtype=xp.float64) for k in keys]))
    return dict(zip(keys, arr.tolist()))


def _layer_stats(host: dict, total: int, series: dict, train: bool) -> dict:
    """Each layer's declared statistics of a pass, reduced as each probe says (training: the per-batch
    ones and those measured at the epoch's end; evaluation: the per-batch ones)."""
    layers: dict = {}
    for layer, probes in series.items():
        values = {}
        for probe in probes:
            if (probe.per_batch or train) and (layer, probe.stat) in host:
                values[probe.name] = probe.reduced(host[(layer, probe.stat)], total)
        layers[layer] = values
    return layers


def epoch_result(epoch: int, lr: float, host: dict, total: int, seconds: float, series: dict) -> dict:
    """A training epoch's record, as the log takes it (``series``: the run's probes by layer)."""
    return {"epoch": epoch, "lr": lr, "train_loss": host["loss"] / total,
            "train_error": 100.0 * (1.0 - host["correct"] / total), "seconds": seconds,
            "layers": _layer_stats(host, total, series, train=True)}


def eval_result(host: dict, total: int, series: dict) -> dict:
    return {"test_loss": host["loss"] / total, "test_error": 100.0 * (1.0 - host["correct"] / total),
            "layers": _layer_stats(host, total, series, train=False)}


def check_finite(result: dict, series: dict) -> None:
    """Raise :class:`Diverged` when an epoch's output loss or any declared local loss is NaN or infinite
    (the local ones first, in depth order)."""
    for layer, probes in series.items():
        values = result["layers"].get(layer, {})
        for probe in probes:
            value = values.get(probe.name)
            if probe.loss and value is not None and not math.isfinite(value):
                what = probe.name.removeprefix("loss_")
                raise Diverged(result["epoch"], f"{layer} local {what}", value)
    if not math.isfinite(result["train_loss"]):
        raise Diverged(result["epoch"], "output", result["train_loss"])



def probe_batch(dataset, backend):
    """The probe's fixed batch: the first test images (up to 128), sorted by class, no augmentation."""
    from bioplaus.data import eval_batches

    x, y = next(iter(eval_batches(dataset, backend, PROBE_SIZE, split="test")))
    idx = backend.asarray(np.argsort(backend.to_host(y), kind="stable"))
    return x[idx], y[idx]


def probe_sets(dataset, backend) -> tuple:
    """The linear probe's fixed images, normalised, no augmentation: the first ``PROBE_TRAIN`` training and
    the first ``PROBE_TEST`` test images (fewer when a split is smaller), with their labels. Fixed, not
    drawn: the probe is the same on every epoch, after a resume and in every split of a pipeline."""
    from bioplaus.data.batches import normalization, normalize

    xp = backend.xp
    a, b = normalization(dataset.spec, xp)
    out = []
    for split, n in (("train", PROBE_TRAIN), ("test", PROBE_TEST)):
        x, y = dataset.split(split)
        out += [normalize(backend.asarray(x[:n]), a, b), backend.asarray(np.asarray(y[:n], np.int64))]
    return tuple(out)


def block_features(net: Blocks, x) -> list:
    """Each block's output on ``x`` (eval mode: running BN statistics, no dropout), flattened to ``(N, D)``;
    ``FEATURE_CHUNK`` images per forward."""
    xp = get_array_module(x)
    feats: list[list] = [[] for _ in net.blocks]
    for start in range(0, x.shape[0], FEATURE_CHUNK):
        h = x[start : start + FEATURE_CHUNK]
        for i, block in enumerate(net.blocks):
            _, _, h, _, _ = block.kind.forward(h, block.params, block.running, block.spec, False, None, net.slope)
            feats[i].append(h.reshape(h.shape[0], -1))  # (n, D)
    return [xp.concatenate(f) for f in feats]


def linear_probes(net: Blocks, sets) -> dict[str, float]:
    """Each block's linear-probe test accuracy in % (:func:`bioplaus.represent.ridge_probe`) on the fixed
    ``sets`` of :func:`probe_sets`."""
    x_train, y_train, x_test, y_test = sets
    train, test = block_features(net, x_train), block_features(net, x_test)
    return {block.name: ridge_probe(a, y_train, b, y_test, net.num_classes)
            for block, a, b in zip(net.blocks, train, test)}


def rule_gradients(net: Blocks, variant, beta: float, x, y) -> list[dict]:
    """Each layer's gradients under ``variant`` (a Rule or a name) on (x, y): no dropout, nothing updated."""
    grads: dict = {}

    def record(i, g):
        grads[i] = {k: v.copy() for k, v in g.items()}

    train_step(net, variant, beta, x, y, [None] * len(net.specs), record)
    return [grads[i] for i in range(len(net.specs))] + [grads[-1]]


def probe(net: Blocks, cfg, backend: Backend, x, y, sets=None) -> dict:
    """How backprop-like is the rule? The angle between each block's weight gradient under the rule
    and the true backprop gradient of the output loss, on the probe batch; plus S(h) of each block;
    and, given the fixed ``sets`` (:func:`probe_sets`), how linearly separable each block's output is."""
    xp = backend.xp
    ours = rule_gradients(net, compose(cfg), cfg.beta, x, y)
    true = rule_gradients(net, REFERENCE_RULE, cfg.beta, x, y)
    values = {}
    for i, spec in enumerate(net.specs):
        names = spec.kind.weight_names(spec)  # a block of several convolutions: all its weights, as one vector
        flat = lambda g, names=names: g[names[0]] if len(names) == 1 else xp.concatenate([g[k].ravel() for k in names])
        values[spec.name] = angle_degrees(xp, flat(ours[i]), flat(true[i]))
    sims = {}
    h = x
    for block in net.blocks:  # S of the block's h (its last tap's)
        hs, _, h, _, _ = block.kind.forward(h, block.params, block.running, block.spec, False, None, net.slope)
        sims[block.name], _ = ops.similarity_forward(hs[-1])
    names = list(values)
    angles = backend.to_host(xp.stack([xp.asarray(values[n], dtype=xp.float64) for n in names]))
    Y = one_hot(y, net.num_classes, x.dtype)
    target, _ = ops.similarity_forward(Y)
    separable = linear_probes(net, sets) if sets is not None else {}
    return {
        "layers": {n: {"bp_angle": float(a), **({"probe_accuracy": separable[n]} if n in separable else {})}
                   for n, a in zip(names, angles)},
        "similarity": {n: backend.to_host(s) for n, s in sims.items()},
        "target_similarity": backend.to_host(target),
        "labels": backend.to_host(y),
    }
