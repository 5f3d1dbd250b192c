"""What a block kind is: one object that knows everything about one kind of block, and the registry.

A network is a stack of blocks (:mod:`bioplaus.models` describes their shapes, each :class:`BlockSpec
<bioplaus.models.BlockSpec>` naming its kind). Everything that differs between kinds of block is asked
of the kind's :class:`BlockKind` object, never switched on by name:

    shapes        taps(spec)            where a local rule's heads read the block (see Tap)
                  output_shape(spec)    one sample of the block's output o, what the next block receives
                  weight_shape(spec)    the weight a carrier (feedback alignment and kin) stands in for
                  mask_shapes(spec, n)  the dropout masks one step draws for the block
                  weight_names(spec)    its forward weights among its params (the probe's bp_angle)
                  num_parameters, describe
    arrays        init(spec, batch_norm, rng)        its parameters and statistics, drawn on the host
    math          forward(x, p, running, spec, train, masks, slope)  -> BlockForward (a named cache in it)
                  backward(dhs, cache, spec, need_dx, overwrite_dh, carry)  -> (δx, grads)
                  output_backward(do, cache), add_output_error(dhs, do, cache, through), carry(spec, M)
    declared      probes(spec), probe_values(p, snapshot(p))   what it records (weight and update norms)
                  cost(spec, batch, need_dx), footprint(spec)  what a step of it costs, what it holds
                  workspace_bytes(spec, batch, gpu, itemsize)  its largest op's buffers (the memory budget)

**Taps.** A tap is a point inside the block where a local rule's heads read a hidden output ``h``
(before dropout) and send their error back. A plain block (dense, conv) has one tap, its own ``h``,
whose heads' arrays keep their plain names (``dec_W``). A block with several learning layers inside
(a residual block, whose convolutions each have their own local heads, as in Nøkland & Eidnes' code)
has a tap per layer: each tap's heads have their own arrays, named ``<tap>.<array>``, and their
statistics go to their own layer of the log, ``<block>.<tap>``. ``forward`` gives ``h`` at every tap,
``backward`` takes the error at every tap: under a local rule a tap's error stays inside its own layer
(the kind treats its layers' inputs as constants), the block's parameters that no tap reaches (a
shortcut) learn from the last tap's error, and no error leaves the block, so a pipeline splits between
blocks. Under a global rule the error at the block's output reaches every tap through the block.

A new kind is a subclass in its own module and one line, ``register(MyKind())``; a model that uses it
names it in its specs (``BlockSpec(name, "my-kind", ...)``, see :func:`bioplaus.models.register_model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from bioplaus import ops
from bioplaus.errors import ConfigError
from bioplaus.probes import Cost, Probe

BlockSpec = Any  # a bioplaus.models.BlockSpec: models imports the kinds (a spec names its kind), never the reverse


class Tap(NamedTuple):
    """A point in a block where a local rule's heads read ``h`` (N, c_out) or (N, c_out, size, size).

    ``c_in, kernel, stride, pad``: the layer that made ``h`` from the tap's input (a reconstruction head
    inverts it); ``dec_window, dec_pad, dec_features``: the average pooling before the heads that read
    pool(h) (DESIGN §1) and its flattened size; ``conv_algorithm``: how the heads' 3x3 convolutions run.
    """

    name: str  # "" for a block's only tap; else its name inside the block
    c_in: int
    c_out: int
    size: int = 1  # side of h's feature map; 1 for a dense h
    spatial: bool = False  # h is a feature map: heads use convolutions and pooling
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    dec_window: tuple[int, int] = (1, 1)
    dec_pad: tuple[int, int] = (0, 0)
    dec_features: int = 0
    conv_algorithm: str = "auto"

    @property
    def prefix(self) -> str:
        """What the names of this tap's head arrays start with ("" for a block's only tap)."""
        return f"{self.name}." if self.name else ""

    def layer(self, block: str) -> str:
        """The tap's layer in the log: the block's name for its only tap, else ``<block>.<tap>``."""
        return f"{block}.{self.name}" if self.name else block

    @property
    def pooled(self) -> bool:
        """Heads that read pool(h) see an average-pooled copy (a feature map larger than dim_in_decoder)."""
        return self.spatial and self.dec_window != (1, 1)


class MaskShape(NamedTuple):
    """One dropout mask a step draws for a block: its shape (batch first) and whether it drops whole
    channels (a mask of (N, C, 1, 1))."""

    shape: tuple
    channelwise: bool = False


class BlockForward(NamedTuple):
    """What a block's forward gives: ``h`` at each tap (before dropout, what the heads read), the input of
    each tap's layer (a constant to the heads), the block's output ``o``, the backward's cache and the
    new batch-norm running statistics."""

    hs: tuple
    inputs: tuple
    o: Any
    cache: Any
    running: dict


class Footprint(NamedTuple):
    """Elements one sample keeps alive in a training step of the block (the memory estimate): its hidden
    output ``h`` at the widest tap and the workspace of its largest op (im2col's columns)."""

    hidden: int
    workspace: int = 0


class BlockKind:
    """The interface of a block kind (see the module docstring); subclasses override what they have."""

    name = ""

    def __eq__(self, other) -> bool:
        if isinstance(other, str):  # a switch on the kind's name would silently never match: ask the kind
            raise TypeError(f"a block kind is not compared with a name ({other!r}); ask the kind (spec.kind.name "
                            "only to print it)")
        return self is other

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<block kind {self.name!r}>"

    # ------------------------------------------------------------------ shapes
    def taps(self, spec: BlockSpec) -> tuple[Tap, ...]:
        raise NotImplementedError

    def output_shape(self, spec: BlockSpec) -> tuple[int, ...]:
        """One sample of the block's output o, as the next block (or the output layer) receives it."""
        raise NotImplementedError

    def weight_shape(self, spec: BlockSpec) -> tuple[int, ...] | None:
        """The shape of the weight that a carrier's matrix stands in for; None: no carrier can (the rules
        that carry errors through stand-ins refuse the kind)."""
        return None

    def mask_shapes(self, spec: BlockSpec, n: int) -> tuple[MaskShape, ...]:
        return ()

    def weight_names(self, spec: BlockSpec) -> tuple[str, ...]:
        """The block's forward weights among its params, whose gradient the probe compares with backprop's
        (``bp_angle``, over all of them as one vector)."""
        return ("W",)

    def num_parameters(self, spec: BlockSpec, batch_norm: bool) -> int:
        raise NotImplementedError

    def describe(self, spec: BlockSpec, batch_norm: bool, nonlin: str, dropout: float) -> str:
        """One line of ``--describe``: the block's layers, e.g. ``Dense 784->1024 -> BatchNorm -> ReLU``."""
        return self.name

    # ------------------------------------------------------------------ arrays and math
    def init(self, spec: BlockSpec, batch_norm: bool, rng) -> tuple[dict, dict]:
        """``(params, running statistics)`` on the host, drawn from the block's stream ``rng``."""
        raise NotImplementedError

    def forward(self, x, p: dict, running: dict, spec: BlockSpec, train: bool, masks, slope: float) -> BlockForward:
        """``masks``: the block's dropout masks (:meth:`mask_shapes`, drawn by the caller) or None."""
        raise NotImplementedError

    def backward(self, dhs, cache, spec: BlockSpec, need_dx: bool, overwrite_dh: bool = False,
                 carry: Callable | None = None):
        """The errors at the taps (a tuple, None where a tap has none) -> ``(δx or None, grads)``. The same
        for every rule. ``overwrite_dh``: the caller hands the errors over (their buffers may be reused,
        and the cache is used up). ``carry(δa, enc_cache) -> δx``: how the error reaches x when a rule
        sends it through another matrix than the weight (:meth:`carry` builds it)."""
        raise NotImplementedError

    def output_backward(self, do, cache):
        """An error at the block's output o -> the error at its last tap's h (global errors only)."""
        raise NotImplementedError

    def add_output_error(self, dhs: list, do, cache, through: bool) -> list:
        """The taps' errors ``dhs`` (None where a tap has none) joined by an error ``do`` at the block's output
        o, as :meth:`backward` takes them. ``through``: the error is the global one (backprop and kin), which
        runs through the whole block; else a rule sends it to this block alone. A block of one tap adds
        :meth:`output_backward`'s error at h to its tap's."""
        dh = self.output_backward(do, cache)
        dhs[-1] = dh if dhs[-1] is None else dhs[-1] + dh
        return dhs

    def carry(self, spec: BlockSpec, M) -> Callable:
        """``carry(δa, enc_cache) -> δx`` through the matrix ``M`` (of :meth:`weight_shape`) instead of W."""
        raise NotImplementedError(f"a {self.name} block has no weight a carrier could stand in for")

    # ------------------------------------------------------------------ declared
    def probes(self, spec: BlockSpec) -> tuple[Probe, ...]:
        """The statistics :meth:`probe_values` gives at the end of every training epoch."""
        return ()

    def snapshot(self, p: dict):
        """What :meth:`probe_values` compares with at the epoch's end, taken at its start."""
        return

    def probe_values(self, p: dict, snapshot) -> dict:
        return {}

    def cost(self, spec: BlockSpec, batch: int, need_dx: bool) -> Cost:
        """One training step of the block on ``batch`` samples (``need_dx``: it sends an error to its input)."""
        return Cost()

    def footprint(self, spec: BlockSpec) -> Footprint:
        return Footprint(math.prod(self.output_shape(spec)))

    def workspace_bytes(self, spec: BlockSpec, batch: int, gpu: bool, itemsize: int) -> int:
        """Bytes its largest op holds at once on ``batch`` samples on a GPU (``gpu``) or the CPU: by default
        the footprint's workspace, built in chunks of at most the device's im2col limit."""
        limit = ops.conv.DEVICE_IM2COL_MAX_BYTES if gpu else ops.conv.IM2COL_MAX_BYTES
        return min(batch * self.footprint(spec).workspace * itemsize, limit)


KINDS: dict[str, BlockKind] = {}


def register(kind: BlockKind) -> BlockKind:
    """Make ``kind`` known by its name (one line in the kind's own module); returns it."""
    if not isinstance(kind, BlockKind):
        raise TypeError("register() takes a bioplaus.kinds.BlockKind")
    if not kind.name or kind.name in KINDS:
        raise ValueError(f"a block kind named {kind.name!r} exists already" if kind.name else
                         "a block kind needs a name")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> BlockKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown block kind {name!r}; the known kinds are {', '.join(KINDS)}") from None


def draw_masks(spec: BlockSpec, rng, p: float, n: int, dtype):
    """The dropout masks of one step of a block (None when p = 0), drawn from the block's own stream."""
    if p <= 0:
        return None
    return tuple(ops.dropout_mask(rng, m.shape, p, dtype, channelwise=m.channelwise)
                 for m in spec.kind.mask_shapes(spec, n))
