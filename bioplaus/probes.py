"""What a unit of the engine declares about itself: the statistics it records and what a step of it costs.

A block kind (:mod:`bioplaus.kinds`), a local head (:mod:`bioplaus.heads`) and an error carrier
(:mod:`bioplaus.rules`) each say which statistics they offer, as :class:`Probe` s::

    Probe("loss_pred", "nats", "mean local prediction loss of the block", MEAN, loss=True)

and the trainer collects whatever the run's units declare: it reduces each probe over an epoch as the
probe says, the log (:mod:`bioplaus.log`) writes exactly those series with their units and
descriptions, the NaN check covers every probe that is a loss, and :mod:`bioplaus.analysis` finds them
in the log by their names. Nothing keeps a list of statistic names by hand.

How an epoch reduces a probe (``reduce``):

    MEAN    a batch mean (a loss): weighted by the batch size, summed, divided by the samples;
            measured on the training batches and on the test set: logged as train_<name>, test_<name>
    ERROR   a count of correctly classified samples per batch, summed: logged as an error in %,
            100 (1 − correct / samples), also as train_<name> and test_<name>
    LAST    a value measured once, at the end of the training epoch (a norm, an angle): <name>
    PROBE   a value measured on the fixed probe batch on probe epochs (NaN on the others): <name>

A :class:`Cost` is what one training step of a unit costs, counted from the shapes: multiply-accumulates
of its forward and backward passes and the bytes its memory-bound passes stream. The split planner of
``--parallel layers`` balances stages on it, the benchmarks turn it into FLOP/s.

This module imports nothing of the engine: the log and the analysis read declarations without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

MEAN, ERROR, LAST, PROBE = "mean", "error", "last", "probe"
REDUCTIONS = (MEAN, ERROR, LAST, PROBE)
SPLITS = ("train", "test")  # the passes a per-batch probe is measured on, and the prefixes of its series
_SPLIT_TEXT = {"train": "on the training batches", "test": "on the test set"}  # as format-1 logs said it


@dataclass(frozen=True)
class Probe:
    """One statistic a unit offers: its ``name`` (in the log: ``train_<name>``/``test_<name>`` for the
    per-batch reductions, ``<name>`` otherwise), ``units`` and ``description`` (written on the log's
    dataset), how an epoch reduces it, the per-batch statistic it reads (``key``, default its name; for
    ERROR the count of correct samples), and whether it is a loss (NaN or infinity: the run diverged)."""

    name: str
    units: str
    description: str
    reduce: str = MEAN
    key: str = ""
    loss: bool = False

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"a probe reduces by one of {', '.join(REDUCTIONS)}, not {self.reduce!r}")
        if not self.name or self.name.startswith(tuple(f"{s}_" for s in SPLITS)) or "/" in self.name:
            raise ValueError(f"a probe's name is a plain word without a train_/test_ prefix, not {self.name!r}")

    @property
    def stat(self) -> str:
        """The per-batch (or per-epoch) statistic this probe reads."""
        return self.key or self.name

    @property
    def per_batch(self) -> bool:
        """Measured on every batch of the training and the test pass (MEAN, ERROR)."""
        return self.reduce in (MEAN, ERROR)

    def series(self) -> dict[str, str]:
        """The log's series of this probe: name -> description."""
        if self.per_batch:
            return {f"{split}_{self.name}": f"{self.description} {_SPLIT_TEXT[split]}" for split in SPLITS}
        return {self.name: self.description}

    def reduced(self, total: float, samples: int) -> float:
        """The epoch's value from the pass's sum (MEAN: of batch means × batch sizes; ERROR: of correct
        counts) over ``samples`` samples; LAST and PROBE values are taken as they are."""
        if self.reduce == MEAN:
            return total / samples
        if self.reduce == ERROR:
            return 100.0 * (1.0 - total / samples)
        return total


def unique(probes) -> tuple[Probe, ...]:
    """``probes`` without repeats by name (two heads sharing one statistic declare it once), in order."""
    seen: dict[str, Probe] = {}
    for probe in probes:
        seen.setdefault(probe.name, probe)
    return tuple(seen.values())


class Cost(NamedTuple):
    """What one training step of a unit costs: multiply-accumulates of its forward pass and of its
    backward pass (weight gradients, and the error it sends to its input when it sends one), and the
    bytes its memory-bound passes stream (batch norm, φ, dropout, pooling; float32). Costs add up:
    ``sum(costs, Cost())``."""

    forward: float = 0.0
    backward: float = 0.0
    bytes: float = 0.0

    def __add__(self, other) -> Cost:  # type: ignore[override]  # element-wise, not tuple concatenation
        return Cost(self.forward + other.forward, self.backward + other.backward, self.bytes + other.bytes)


    @property
    def flops(self) -> float:
        """Floating-point operations of the multiply-accumulates (2 per MAC)."""
        return 2.0 * (self.forward + self.backward)
