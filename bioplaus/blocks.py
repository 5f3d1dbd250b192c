"""A network's blocks and what each one holds: one state object per block, and the output layer.

    Block    a block's spec and its arrays, in named groups:
               params    trained with the block's optimizer: W, b, γ, β and its heads' weights (as the authors)
               fixed     fixed random matrices of its heads (B, P): never trained, never seen by the optimizer
               running   batch-norm running statistics
               feedback  what carries errors in place of the forward weights (feedback alignment's fixed B,
                         Kolen-Pollack's B that follows W, the direct projections of DFA and DRTP)
               opt       the optimizer's state of each parameter (step, moments)
    Output   the output layer: params W (K, D), b (K,), its feedback matrix, its optimizer state
    Blocks   a contiguous run of blocks (the whole network, or a pipeline stage's share) and the output
             layer when the run ends the network

:meth:`State.arrays` turns a state into named arrays (``params/W``, ``opt/W/m``, ...) and
:meth:`State.load` takes them back: the one place the names of a checkpoint's arrays come from
(``blocks/<block>/<group>/<name>``, ``out/<group>/<name>``; :mod:`bioplaus.stage`). What a block
computes is its kind's business (:mod:`bioplaus.kinds`); which heads it carries and where its error
comes from is the rule's (:mod:`bioplaus.rules`, which imports this module, never the reverse).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from bioplaus import ops
from bioplaus.models import BlockSpec

LEAKY_SLOPE = 0.01
GROUPS = ("params", "fixed", "running", "feedback")  # the array groups of a state, in the checkpoint's order

INIT_STREAM = 0x1417  # initial weights of block i come from the stream (seed, INIT_STREAM, i)
OUTPUT_STREAM_INDEX = 10_000  # ... and the output layer's from (seed, INIT_STREAM, OUTPUT_STREAM_INDEX)


def init_stream(seed: int, index: int) -> np.random.Generator:
    """The host random stream that block ``index``'s initial arrays (and its heads') are drawn from."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, INIT_STREAM, index])))


@dataclass
class State:
    """Named groups of arrays (see the module docstring); ``opt`` maps a parameter to its optimizer slots."""

    params: dict
    fixed: dict = field(default_factory=dict)
    running: dict = field(default_factory=dict)
    feedback: dict = field(default_factory=dict)
    opt: dict = field(default_factory=dict)

    def arrays(self, to_host: Callable = np.asarray, opt: bool = True) -> dict[str, np.ndarray]:
        """Every array as a host copy (training goes on), named ``<group>/<name>`` and
        ``opt/<param>/<slot>``; without the optimizer's state when ``opt`` is False."""
        out: dict[str, np.ndarray] = {}
        for group in GROUPS:
            for key, value in getattr(self, group).items():
                out[f"{group}/{key}"] = np.array(to_host(value))
        if opt:
            for key, slots in self.opt.items():
                for slot, value in slots.items():
                    out[f"opt/{key}/{slot}"] = np.asarray(value) if np.isscalar(value) else np.array(to_host(value))
        return out

    def load(self, arrays: Mapping[str, np.ndarray], to_device: Callable) -> None:
        """Take the arrays named as :meth:`arrays` names them (copied onto the device by ``to_device``);
        other names are ignored. The caller has checked names, shapes and dtypes."""
        for name, value in arrays.items():
            group, _, key = name.partition("/")
            if group in GROUPS:
                getattr(self, group)[key] = to_device(value)
            elif group == "opt":
                key, _, slot = key.rpartition("/")
                self.opt.setdefault(key, {})[slot] = value.item() if value.ndim == 0 else to_device(value)


@dataclass
class Block(State):
    """One block: its spec (shapes and kind) and its arrays."""

    spec: BlockSpec | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self):
        return self.spec.kind


@dataclass
class Blocks:
    """A contiguous run of a network's blocks (``first``: the index of the first in the network), and the
    output layer when the run ends the network (``out``, else None). The whole network is one ``Blocks``;
    a stage of a pipeline holds a slice."""

    blocks: list[Block]
    first: int
    out: State | None
    slope: float  # φ's negative slope: 0.0 (ReLU) or 0.01 (leaky ReLU)
    num_classes: int

    @property
    def specs(self) -> tuple[BlockSpec, ...]:
        return tuple(b.spec for b in self.blocks)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    @property
    def dtype(self):
        return next(iter(self.blocks[0].params.values())).dtype if self.blocks else self.out.params["W"].dtype


def _uniform(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape)


def init_output(num_features: int, num_classes: int, seed: int, zero_weights: bool) -> dict:
    """The output layer on the host: W, b uniform in ±1/√D; W zeroed when ``zero_weights``."""
    rng = init_stream(seed, OUTPUT_STREAM_INDEX)
    bound = 1.0 / math.sqrt(num_features)
    W = _uniform(rng, (num_classes, num_features), bound)
    if zero_weights:
        W[:] = 0.0
    return {"W": W, "b": _uniform(rng, (num_classes,), bound)}


def output_layer_forward(x, out: dict):
    """The network's prediction from the last block's output (flattened); ``out``: the layer's params."""
    x = x.reshape(x.shape[0], -1)  # (N, D)
    return ops.dense_forward(x, out["W"], out["b"])  # (N, K)
