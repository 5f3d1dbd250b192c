"""The epoch loop: train steps, evaluation, the probe, and the training state.

The trainer owns the order of work and the optimizer; the rules (:mod:`bioplaus.rules`) say
where errors come from; the log (:mod:`bioplaus.log`) is fed by whoever calls the trainer.
Statistics stay on the device during an epoch and reach the host once, at its end.

Randomness is keyed by (seed, epoch): epoch e's batch order, augmentation and every block's
dropout masks depend only on the seed and e, so a run resumed from an epoch boundary redraws
exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from bioplaus import ops
from bioplaus.backend import TRAIN_DTYPE, Backend
from bioplaus.blocks import Network, block_forward, init_network
from bioplaus.config import Config
from bioplaus.models import build_spec, describe_model
from bioplaus.optim import make_optimizer
from bioplaus.rules import RULES, evaluate_batch, one_hot, train_step

PROBE_SIZE = 128


class Diverged(RuntimeError):
    """A loss became NaN or infinite; the message names the epoch and the layer."""

    def __init__(self, epoch: int, layer: str, value: float):
        self.epoch, self.layer, self.value = epoch, layer, value
        super().__init__(f"training diverged in epoch {epoch}: the {layer} loss became {value}")


def angle_degrees(xp, a, b):
    """Angle between two arrays seen as vectors, in degrees (a 0-d device array; NaN if either is 0)."""
    a, b = a.ravel(), b.ravel()
    cos = xp.dot(a, b) / (xp.linalg.norm(a) * xp.linalg.norm(b))
    return xp.degrees(xp.arccos(xp.clip(cos, -1.0, 1.0)))


class _Sums:
    """Running sums of a pass over the data, kept on the device (no host sync per batch)."""

    def __init__(self, num_blocks: int):
        self.n = 0
        self.loss = self.correct = 0
        self.blocks: list[dict] = [{} for _ in range(num_blocks)]

    def add(self, n: int, loss, correct, block_stats: list) -> None:
        self.n += n
        self.loss = self.loss + loss * n
        self.correct = self.correct + correct
        for sums, stats in zip(self.blocks, block_stats):
            for key, value in stats.items():  # losses are batch means: weight by n; counts add up
                sums[key] = sums.get(key, 0) + (value if key.startswith("correct") else value * n)

    def scalars(self) -> dict:
        return {"loss": self.loss, "correct": self.correct}


class Trainer:
    """Trains one network under one variant; see the module docstring."""

    def __init__(self, cfg: Config, backend: Backend, dataset, dtype=TRAIN_DTYPE):
        from bioplaus.data import TrainBatches

        self.cfg = cfg
        self.backend = backend
        self.xp = backend.xp
        self.dataset = dataset
        self.rule = RULES[cfg.variant]
        spec = build_spec(cfg, dataset.spec.input_shape, dataset.spec.num_classes)
        self.net: Network = init_network(spec, cfg, backend, dtype)
        self.optimizer = make_optimizer(cfg.optim, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.opt_state = [{k: self.optimizer.init_state(v) for k, v in p.items()} for p in self.net.params]
        self.opt_state_out = {k: self.optimizer.init_state(v) for k, v in self.net.out.items()}
        self.batches = TrainBatches(
            dataset, backend, cfg.batch_size, cfg.seed, augment=True,
            cutout_length=cfg.cutout_length if cfg.cutout else 0,
            classes_per_batch=cfg.classes_per_batch,
            classes_per_batch_until_epoch=cfg.classes_per_batch_until_epoch)
        self.epoch = 0
        self._lr = cfg.lr
        self._probe_batch = None

    # ------------------------------------------------------------------ description
    @property
    def layer_names(self) -> list[str]:
        return [b.name for b in self.net.spec.blocks] + ["out"]

    @property
    def num_parameters(self) -> int:
        return self.net.spec.num_parameters

    def describe(self) -> str:
        return describe_model(self.cfg, self.dataset.spec.input_shape, self.dataset.spec.num_classes)

    # ------------------------------------------------------------------ training
    def _update(self, i: int, grads: dict) -> None:
        params = self.net.out if i < 0 else self.net.params[i]
        states = self.opt_state_out if i < 0 else self.opt_state[i]
        for key, grad in grads.items():
            self.optimizer.step(params[key], grad, states[key], self._lr)

    def _masks(self, rngs, x) -> list:
        """Dropout masks for every block, drawn from each block's own stream (None when p = 0)."""
        if self.cfg.dropout <= 0:
            return [None] * len(rngs)
        masks, n = [], x.shape[0]
        for spec, rng in zip(self.net.spec.blocks, rngs):
            shape = (n, spec.c_out, spec.size, spec.size) if spec.kind == "conv" else (n, spec.c_out)
            masks.append(ops.dropout_mask(rng, shape, self.cfg.dropout, x.dtype, channelwise=spec.kind == "conv"))
        return masks

    def train_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict:
        """Train epoch ``self.epoch + 1``; returns its statistics as host floats."""
        xp, cfg = self.xp, self.cfg
        epoch = self.epoch + 1
        self._lr = cfg.lr_at(epoch)
        start = time.perf_counter()
        rngs = [self.backend.rng(cfg.seed, "dropout", i, epoch) for i in range(len(self.net.spec.blocks))]
        w_start = [p["W"].copy() for p in self.net.params]
        total = self.batches.num_samples
        sums = _Sums(len(self.net.spec.blocks))
        for x, y in self.batches.epoch(epoch):
            running, loss, ok, stats = train_step(self.net, cfg.variant, cfg.beta, x, y, self._masks(rngs, x),
                                                  self._update)
            self.net.running = running
            sums.add(x.shape[0], loss, ok, stats)
            if on_batch is not None:
                on_batch(sums.n, total)
        extra = {}
        for i, p in enumerate(self.net.params):
            extra[(i, "weight_norm")] = xp.linalg.norm(p["W"].ravel())
            extra[(i, "update_norm")] = xp.linalg.norm((p["W"] - w_start[i]).ravel())
            if "B" in self.net.fixed[i]:
                extra[(i, "fa_angle")] = angle_degrees(xp, p["dec_W"], self.net.fixed[i]["B"])
        host = self._to_host(sums.scalars(), sums.blocks, extra)
        self.epoch = epoch
        result = {
            "epoch": epoch,
            "lr": self._lr,
            "train_loss": host["loss"] / total,
            "train_error": 100.0 * (1.0 - host["correct"] / total),
            "seconds": time.perf_counter() - start,
            "layers": self._layer_stats(host, total),
        }
        self._check_finite(result)
        return result

    def _to_host(self, scalars: dict, block_sums: list, extra: dict) -> dict:
        """One device->host transfer for the whole epoch's statistics."""
        xp = self.xp
        keys, values = [], []
        for key, v in scalars.items():
            keys.append(key)
            values.append(v)
        for i, sums in enumerate(block_sums):
            for key, v in sums.items():
                keys.append((i, key))
                values.append(v)
        for key, v in extra.items():
            keys.append(key)
            values.append(v)
        arr = self.backend.to_host(xp.stack([xp.asarray(v, dtype=xp.float64) for v in values]))
        return dict(zip(keys, arr.tolist()))

    def _layer_stats(self, host: dict, total: int) -> dict:
        layers: dict = {}
        for i, spec in enumerate(self.net.spec.blocks):
            s = {}
            for key in ("loss_pred", "loss_sim"):
                if (i, key) in host:
                    s[key] = host[(i, key)] / total
            if (i, "correct_pred") in host:
                s["error_pred"] = 100.0 * (1.0 - host[(i, "correct_pred")] / total)
            for key in ("weight_norm", "update_norm", "fa_angle"):
                if (i, key) in host:
                    s[key] = host[(i, key)]
            layers[spec.name] = s
        layers["out"] = {}
        return layers

    def _check_finite(self, result: dict) -> None:
        for name, s in result["layers"].items():
            for key in ("loss_pred", "loss_sim"):
                if key in s and not math.isfinite(s[key]):
                    raise Diverged(result["epoch"], f"{name} local {key[5:]}", s[key])
        if not math.isfinite(result["train_loss"]):
            raise Diverged(result["epoch"], "output", result["train_loss"])

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split: str = "test") -> dict:
        """Eval-mode BN, no dropout, the output layer's prediction; local predictors too."""
        from bioplaus.data import eval_batches

        sums = _Sums(len(self.net.spec.blocks))
        for x, y in eval_batches(self.dataset, self.backend, max(self.cfg.batch_size, 256), split=split):
            sums.add(x.shape[0], *evaluate_batch(self.net, self.cfg.variant, x, y))
        host = self._to_host(sums.scalars(), sums.blocks, {})
        total = sums.n
        layers = self._layer_stats(host, total)
        return {"test_loss": host["loss"] / total, "test_error": 100.0 * (1.0 - host["correct"] / total),
                "layers": layers}

    # ------------------------------------------------------------------ probe
    def probe_batch(self):
        """A fixed batch of test images (up to 128, sorted by class), no augmentation."""
        if self._probe_batch is None:
            from bioplaus.data import eval_batches

            x, y = next(iter(eval_batches(self.dataset, self.backend, PROBE_SIZE, split="test")))
            order = np.argsort(self.backend.to_host(y), kind="stable")
            idx = self.backend.asarray(order)
            self._probe_batch = (x[idx], y[idx])
        return self._probe_batch

    def rule_gradients(self, variant: str, x, y) -> list[dict]:
        """Each layer's gradients under ``variant`` on (x, y): no dropout, nothing updated."""
        grads: dict = {}

        def record(i, g):
            grads[i] = {k: v.copy() for k, v in g.items()}

        train_step(self.net, variant, self.cfg.beta, x, y, [None] * len(self.net.spec.blocks), record)
        return [grads[i] for i in range(len(self.net.spec.blocks))] + [grads[-1]]

    def probe(self) -> dict:
        """How backprop-like is the rule? The angle between each block's weight gradient under the
        rule and the true backprop gradient of the output loss, on the probe batch; plus S(h)."""
        xp = self.xp
        x, y = self.probe_batch()
        ours = self.rule_gradients(self.cfg.variant, x, y)
        true = self.rule_gradients("glob", x, y)
        values = {}
        for i, spec in enumerate(self.net.spec.blocks):
            values[spec.name] = angle_degrees(xp, ours[i]["W"], true[i]["W"])
        sims = {}
        h = x
        for i, spec in enumerate(self.net.spec.blocks):
            hi, h, _, _ = block_forward(h, self.net.params[i], self.net.running[i], spec, False, None,
                                        self.net.slope)
            sims[spec.name], _ = ops.similarity_forward(hi)
        names = list(values)
        angles = self.backend.to_host(xp.stack([xp.asarray(values[n], dtype=xp.float64) for n in names]))
        Y = one_hot(y, self.net.spec.num_classes, x.dtype)
        target, _ = ops.similarity_forward(Y)
        return {
            "layers": {n: {"bp_angle": float(a)} for n, a in zip(names, angles)},
            "similarity": {n: self.backend.to_host(s) for n, s in sims.items()},
            "target_similarity": self.backend.to_host(target),
            "labels": self.backend.to_host(y),
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to continue: parameters, fixed matrices, BN statistics, optimizer
        states, and the number of completed epochs (random streams are keyed by epoch)."""
        to_host = self.backend.to_host
        out: dict[str, np.ndarray] = {"epoch": np.asarray(self.epoch)}
        for i in range(len(self.net.params)):
            for group, d in (("params", self.net.params[i]), ("fixed", self.net.fixed[i]),
                             ("running", self.net.running[i])):
                for k, v in d.items():
                    out[f"{group}/{i}/{k}"] = to_host(v)
            for k, st in self.opt_state[i].items():
                for sk, sv in st.items():
                    out[f"opt/{i}/{k}/{sk}"] = np.asarray(sv) if np.isscalar(sv) else to_host(sv)
        for k, v in self.net.out.items():
            out[f"out/{k}"] = to_host(v)
        for k, st in self.opt_state_out.items():
            for sk, sv in st.items():
                out[f"opt/out/{k}/{sk}"] = np.asarray(sv) if np.isscalar(sv) else to_host(sv)
        return out

    def load_state_dict(self, state: dict) -> None:
        dev = self.backend.asarray
        expected = set(self.state_dict())
        if set(state) != expected:
            missing = sorted(expected - set(state))[:3]
            raise ValueError(f"the checkpoint does not match this network (e.g. {missing} missing)")
        for key, value in state.items():
            parts = key.split("/")
            if parts[0] == "epoch":
                self.epoch = int(value)
            elif parts[0] in ("params", "fixed", "running"):
                group = {"params": self.net.params, "fixed": self.net.fixed, "running": self.net.running}[parts[0]]
                group[int(parts[1])][parts[2]] = dev(value)
            elif parts[0] == "out":
                self.net.out[parts[1]] = dev(value)
            elif parts[0] == "opt":
                st = (self.opt_state_out if parts[1] == "out" else self.opt_state[int(parts[1])])[parts[2]]
                st[parts[3]] = value.item() if value.ndim == 0 else dev(value)
