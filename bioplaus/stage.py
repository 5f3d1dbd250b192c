"""A stage: a contiguous run of blocks (the last stage also holds the output layer) with everything it
owns, the unit that one process, or one GPU, trains.

A stage owns its blocks' parameters, head weights, fixed matrices (B, P), batch-norm statistics,
optimizer states and per-block random streams (dropout masks of block i in epoch e come from the
stream (seed, "dropout", i, e) alone), and the running sums of its blocks' statistics. It offers::

    stage.begin_epoch(e)                 learning rate and random streams of epoch e
    o = stage.train_step(x, y)           forward, each block's local update, the output for the next stage
    o = stage.eval_step(x, y)            eval mode, statistics only
    stage.epoch_values()                 the epoch's sums and norms, still on the device, keyed by block
    stage.state_dict() / load_state_dict(state)     keyed by block name (``blocks/<name>/...``)

Under a local rule no error crosses a stage boundary, so stages can run one after another in one
process (:class:`bioplaus.train.Trainer`) or at the same time in a pipeline (:mod:`bioplaus.parallel`)
with the same arithmetic, bit for bit. A global rule (backprop) makes the whole network one stage.
"""

from __future__ import annotations

import numpy as np

from bioplaus import ops
from bioplaus.backend import TRAIN_DTYPE, Backend
from bioplaus.blocks import LEAKY_SLOPE, Blocks
from bioplaus.models import NetSpec
from bioplaus.optim import make_optimizer
from bioplaus.rules import compose, evaluate_batch, head_alignment, init_blocks, train_step


class Sums:
    """Running sums of a pass over the data, kept on the device (no host sync per batch)."""

    def __init__(self, names: list[str]):
        self.n = 0
        self.loss = self.correct = 0
        self.blocks: dict[str, dict] = {name: {} for name in names}

    def add(self, n: int, loss, correct, block_stats: list) -> None:
        self.n += n
        if loss is not None:
            self.loss = self.loss + loss * n
            self.correct = self.correct + correct
        for sums, stats in zip(self.blocks.values(), block_stats):
            for key, value in stats.items():  # losses are batch means: weight by n; counts add up
                sums[key] = sums.get(key, 0) + (value if key.startswith("correct") else value * n)


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
        self.opt_state = [{k: self.optimizer.init_state(v) for k, v in p.items()} for p in self.net.params]
        self.opt_state_out = ({k: self.optimizer.init_state(v) for k, v in self.net.out.items()}
                              if self.net.out is not None else None)
        self.lr = cfg.lr
        self._rngs: list = []
        self._w_start: list = []
        self.train_sums = Sums(self.names)
        self.eval_sums = Sums(self.names)

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

    # ------------------------------------------------------------------ training
    def begin_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (1-based): its learning rate, each block's dropout stream, fresh sums."""
        self.lr = self.cfg.lr_at(epoch)
        self._rngs = [self.backend.rng(self.cfg.seed, "dropout", self.first + j, epoch) for j in range(len(self.names))]
        self._w_start = [p["W"].copy() for p in self.net.params]
        self.train_sums = Sums(self.names)

    def _masks(self, x) -> list:
        """Dropout masks for every block, drawn from each block's own stream (None when p = 0)."""
        if self.cfg.dropout <= 0:
            return [None] * len(self.names)
        masks, n = [], x.shape[0]
        for spec, rng in zip(self.net.specs, self._rngs):
            shape = (n, spec.c_out, spec.size, spec.size) if spec.kind == "conv" else (n, spec.c_out)
            masks.append(ops.dropout_mask(rng, shape, self.cfg.dropout, x.dtype, channelwise=spec.kind == "conv"))
        return masks

    def _update(self, i: int, grads: dict) -> None:
        params = self.net.out if i < 0 else self.net.params[i - self.first]
        states = self.opt_state_out if i < 0 else self.opt_state[i - self.first]
        carrier = self.rule.carrier
        W_before = params["W"].copy() if carrier is not None and carrier.learns else None
        for key, grad in grads.items():
            self.optimizer.step(params[key], grad, states[key], self.lr)
        if W_before is not None:  # Kolen-Pollack: the feedback matrix follows W's update
            fb = self.net.out_feedback if i < 0 else self.net.feedback[i - self.first]
            carrier.after_update(fb, W_before, params["W"], self.lr, self.cfg.weight_decay)

    def train_step(self, x, y):
        """One mini-batch: forward, each block's update under the rule; returns the last block's output."""
        step = train_step(self.net, self.rule, self.cfg.beta, x, y, self._masks(x), self._update)
        self.net.running = step.running
        self.train_sums.add(x.shape[0], step.loss, step.correct, step.block_stats)
        return step.output

    def begin_eval(self) -> None:
        self.eval_sums = Sums(self.names)

    def eval_step(self, x, y):
        step = evaluate_batch(self.net, self.rule, x, y)
        self.eval_sums.add(x.shape[0], step.loss, step.correct, step.block_stats)
        return step.output

    def epoch_values(self, train: bool = True) -> dict:
        """The pass's sums (and, after training, each block's weight and update norms and the heads'
        alignment), as device arrays keyed by (block name, key), or by "loss"/"correct" for the output."""
        xp = self.xp
        sums = self.train_sums if train else self.eval_sums
        values: dict = {}
        if self.is_last:
            values["loss"], values["correct"] = sums.loss, sums.correct
        for name, block_sums in sums.blocks.items():
            for key, v in block_sums.items():
                values[(name, key)] = v
        if train:
            for j, (name, p) in enumerate(zip(self.names, self.net.params)):
                values[(name, "weight_norm")] = xp.linalg.norm(p["W"].ravel())
                values[(name, "update_norm")] = xp.linalg.norm((p["W"] - self._w_start[j]).ravel())
                for key, v in head_alignment(self.rule, p, self.net.fixed[j], self.net.feedback[j]).items():
                    values[(name, key)] = v
            if self.is_last and self.rule.carrier is not None:
                for key, v in self.rule.carrier.alignment(self.net.out["W"], self.net.out_feedback).items():
                    values[("out", key)] = v
        return values

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters, fixed matrices, BN statistics and optimizer states, keyed by block name."""
        to_host = self.backend.to_host
        out: dict[str, np.ndarray] = {}
        nets = zip(self.names, self.net.params, self.net.fixed, self.net.running, self.net.feedback, self.opt_state)
        for name, p, f, r, fb, st in nets:
            for group, d in (("params", p), ("fixed", f), ("running", r), ("feedback", fb)):
                for k, v in d.items():
                    out[f"blocks/{name}/{group}/{k}"] = np.array(to_host(v))  # a copy: training goes on
            for k, slots in st.items():
                for slot, v in slots.items():
                    out[f"blocks/{name}/opt/{k}/{slot}"] = np.asarray(v) if np.isscalar(v) else np.array(to_host(v))
        if self.is_last:
            for k, v in self.net.out.items():
                out[f"out/params/{k}"] = np.array(to_host(v))
            for k, v in self.net.out_feedback.items():
                out[f"out/feedback/{k}"] = np.array(to_host(v))
            for k, slots in self.opt_state_out.items():
                for slot, v in slots.items():
                    out[f"out/opt/{k}/{slot}"] = np.asarray(v) if np.isscalar(v) else np.array(to_host(v))
        return out

    def load_state_dict(self, state: dict) -> None:
        """Load this stage's arrays from ``state`` (a whole network's state may hold more: ignored).
        The caller has checked names, shapes and dtypes (:func:`bioplaus.checkpoint.describe_mismatch`)."""
        xp = self.xp

        def dev(value):  # a copy: the caller's arrays stay the caller's
            return xp.array(value, copy=True)

        for j, name in enumerate(self.names):
            groups = {"params": self.net.params[j], "fixed": self.net.fixed[j], "running": self.net.running[j],
                      "feedback": self.net.feedback[j]}
            prefix = f"blocks/{name}/"
            for key, value in state.items():
                if not key.startswith(prefix):
                    continue
                parts = key[len(prefix):].split("/")
                if parts[0] in groups:
                    groups[parts[0]][parts[1]] = dev(value)
                elif parts[0] == "opt":
                    self.opt_state[j][parts[1]][parts[2]] = value.item() if value.ndim == 0 else dev(value)
        if self.is_last:
            for key, value in state.items():
                parts = key.split("/")
                if parts[0] == "out" and parts[1] == "params":
                    self.net.out[parts[2]] = dev(value)
                elif parts[0] == "out" and parts[1] == "feedback":
                    self.net.out_feedback[parts[2]] = dev(value)
                elif parts[0] == "out" and parts[1] == "opt":
                    self.opt_state_out[parts[2]][parts[3]] = value.item() if value.ndim == 0 else dev(value)
