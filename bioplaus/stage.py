"""A stage: a contiguous run of blocks (the last stage also holds the output layer) with everything it
owns, the unit that one process, or one GPU, trains.

A stage owns its blocks' parameters, head weights, fixed matrices (B, P), batch-norm statistics,
optimizer states and per-block random streams (dropout masks of block i in epoch e come from the
stream (seed, "dropout", i, e) alone), and the running sums of its blocks' statistics. It offers::

    stage.begin_epoch(e)                 learning rate and random streams of epoch e
    o = stage.train_step(x, y)           forward, each block's local update, the output for the next stage
    o = stage.eval_step(x, y)            eval mode, statistics only
    stage.epoch_values()                 the epoch's sums and what its units measure, still on the device,
                                         keyed by (layer, statistic) as the blocks, heads and carriers declare
    stage.state_dict() / load_state_dict(state)     keyed by block name (``blocks/<name>/...``)

Under a local rule no error crosses a stage boundary, so stages can run one after another in one
process (:class:`bioplaus.train.Trainer`) or at the same time in a pipeline (:mod:`bioplaus.parallel`)
with the same arithmetic, bit for bit. A global rule (backprop) makes the whole network one stage.
"""

from __future__ import annotations

import numpy as np

from bioplaus.backend import TRAIN_DTYPE, Backend
from bioplaus.blocks import LEAKY_SLOPE, Blocks
from bioplaus.kinds import draw_masks
from bioplaus.models import NetSpec
from bioplaus.optim import make_optimizer
from bioplaus.probes import ERROR, Probe
from bioplaus.rules import alignment, apply_update, compose, declared_probes, evaluate_batch, init_blocks, train_step


class Sums:
    """Running sums of a pass over the data, kept on the device (no host sync per batch): the output
    layer's loss and correct count, and each layer's declared per-batch statistics (``series``:
    layer -> probes; batch means are weighted by the batch size, counts add up)."""

    def __init__(self, series: dict[str, tuple[Probe, ...]]):
        self.n = 0
        self.loss = self.correct = 0
        self.counts = {layer: {p.stat: p.reduce == ERROR for p in probes if p.per_batch}
                       for layer, probes in series.items()}
        self.layers: dict[str, dict] = {layer: {} for layer in series}

    def add(self, n: int, loss, correct, stats: dict) -> None:
        self.n += n
        if loss is not None:
            self.loss = self.loss + loss * n
            self.correct = self.correct + correct
        for layer, layer_stats in stats.items():
            sums, counts = self.layers.get(layer, {}), self.counts.get(layer, {})
            for key, value in layer_stats.items():
                if key in counts:  # what the layer's probes read; losses are batch means: weight by n
                    sums[key] = sums.get(key, 0) + (value if counts[key] else value * n)


class Stage:
    """Blocks ``first..stop-1`` of the network of ``spec`` under ``cfg``; see the module docstring."""

    def __init__(self, cfg, spec: NetSpec, backend: Backend, first: int = 0, stop: int | None = None,
                 dtype=TRAIN_DTYPE) -> None:
        self.cfg = cfg
        self.spec = spec
        self.backend = backend
        self.xp = backend.xp
        self.rule = compose(cfg)
        stop = len(spec.blocks) if stop is None else stop
        if self.rule.global_error and (first, stop) != (0, len(spec.blocks)):
            raise ValueError(f"{cfg.variant} backpropagates through every block: its stage is the whole network")
        slope = LEAKY_SLOPE if cfg.nonlin == "leakyrelu" else 0.0
        self.net: Blocks = init_blocks(spec, self.rule, cfg.seed, cfg.target_proj_size, slope, backend, dtype,
                                       first, stop)
        self.optimizer = make_optimizer(cfg.optim, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        for state in self.states:
            state.opt = {k: self.optimizer.init_state(v) for k, v in state.params.items()}
        mine = {layer for b in self.net.specs for layer in (b.name, *(t.layer(b.name) for t in b.kind.taps(b)))}
        mine |= {"out"} if self.is_last else set()
        self.series = {layer: probes for layer, probes in declared_probes(spec, self.rule).items() if layer in mine}
        self.lr = cfg.lr
        self._rngs: list = []
        self._snapshots: list = []
        self.train_sums = Sums(self.series)
        self.eval_sums = Sums(self.series)

    # ------------------------------------------------------------------ description
    @property
    def names(self) -> list[str]:
        return self.net.names

    @property
    def first(self) -> int:
        return self.net.first

    @property
    def is_last(self) -> bool:
        return self.net.out is not None

    @property
    def states(self) -> list:
        """Every state this stage owns: its blocks', and the output layer's when it ends the network."""
        return [*self.net.blocks, *([self.net.out] if self.is_last else [])]

    # ------------------------------------------------------------------ training
    def begin_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (1-based): its learning rate, each block's dropout stream, fresh sums."""
        self.lr = self.cfg.lr_at(epoch)
        self._rngs = [self.backend.rng(self.cfg.seed, "dropout", self.first + j, epoch) for j in range(len(self.names))]
        self._snapshots = [b.kind.snapshot(b.params) for b in self.net.blocks]
        self.train_sums = Sums(self.series)

    def _masks(self, x) -> list:
        """Dropout masks for every block, drawn from each block's own stream (None when p = 0)."""
        if self.cfg.dropout <= 0:
            return [None] * len(self.names)
        return [draw_masks(spec, rng, self.cfg.dropout, x.shape[0], x.dtype)
                for spec, rng in zip(self.net.specs, self._rngs)]

    def update(self, i: int, grads: dict) -> None:
        """Block i's gradients (i counted in the network; -1: the output layer) applied: the optimizer's
        step, then what the rule does after an update (:func:`bioplaus.rules.apply_update`)."""
        state = self.net.out if i < 0 else self.net.blocks[i - self.first]
        apply_update(self.rule, state, grads, self.optimizer, self.lr, self.cfg.weight_decay)

    def train_step(self, x, y):
        """One mini-batch: forward, each block's update under the rule; returns the last block's output."""
        step = train_step(self.net, self.rule, self.cfg.beta, x, y, self._masks(x), self.update)
        for block, running in zip(self.net.blocks, step.running):
            block.running = running
        self.train_sums.add(x.shape[0], step.loss, step.correct, step.stats)
        return step.output

    def begin_eval(self) -> None:
        self.eval_sums = Sums(self.series)

    def eval_step(self, x, y):
        step = evaluate_batch(self.net, self.rule, x, y)
        self.eval_sums.add(x.shape[0], step.loss, step.correct, step.stats)
        return step.output

    def epoch_values(self, train: bool = True) -> dict:
        """The pass's sums (and, after training, what each block's kind, heads and carrier measure at the
        epoch's end: norms, alignment), as device arrays keyed by (layer, key), or by "loss"/"correct"
        for the output."""
        sums = self.train_sums if train else self.eval_sums
        values: dict = {}
        if self.is_last:
            values["loss"], values["correct"] = sums.loss, sums.correct
        for layer, layer_sums in sums.layers.items():
            for key, v in layer_sums.items():
                values[(layer, key)] = v
        if train:
            for j, block in enumerate(self.net.blocks):
                for key, v in block.kind.probe_values(block.params, self._snapshots[j]).items():
                    values[(block.name, key)] = v
                values.update(alignment(self.rule, block, self.first + j == 0))
            if self.is_last and self.rule.carrier is not None:
                for key, v in self.rule.carrier.alignment(self.net.out.params["W"], self.net.out.feedback).items():
                    values[("out", key)] = v
        return values

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters, fixed matrices, BN statistics and optimizer states, keyed by block name
        (``blocks/<block>/<group>/<name>``, ``out/<group>/<name>``; :meth:`bioplaus.blocks.State.arrays`)."""
        out: dict[str, np.ndarray] = {}
        for block in self.net.blocks:
            out.update({f"blocks/{block.name}/{k}": v for k, v in block.arrays(self.backend.to_host).items()})
        if self.is_last:
            out.update({f"out/{k}": v for k, v in self.net.out.arrays(self.backend.to_host).items()})
        return out

    def load_state_dict(self, state: dict) -> None:
        """Load this stage's arrays from ``state`` (a whole network's state may hold more: ignored).
        The caller has checked names, shapes and dtypes (:func:`bioplaus.checkpoint.describe_mismatch`)."""
        xp = self.xp

        def dev(value):  # a copy: the caller's arrays stay the caller's
            return xp.array(value, copy=True)

        for block in self.net.blocks:
            prefix = f"blocks/{block.name}/"
            block.load({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, dev)
        if self.is_last:
            self.net.out.load({k[4:]: v for k, v in state.items() if k.startswith("out/")}, dev)
