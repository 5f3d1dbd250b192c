"""How much memory a run needs, estimated from shapes before anything is allocated.

A configuration that cannot fit is bad input (one sentence with the estimate), not an allocation
failure an hour into a run. The estimate counts, in the training dtype (float32):

    parameters P (blocks, heads, output layer) and fixed matrices; gradients of one block at a time;
    optimizer state: 2 P (Adam), 3 P (AMSGrad), P (SGD with momentum);
    activations of one step: local rules hold one block at a time (its input, pre-activation, output,
    BN's normalised copy, the heads' maps and errors, its convolution's workspace: one chunk's im2col
    columns or Winograd buffers, whichever the block's ``--conv-algorithm`` runs it by on this device),
    backprop holds every block's cache until its backward;
    the training images in uint8 (once, padded for cropping) and one batch in float32.

It is an estimate (within a factor of about 1.5 of what the benchmarks measure), meant to catch
settings that are off by orders of magnitude, such as ``--feat-mult 1000``.

Every number comes from what the units declare: a block's kind its footprint and its cost, a head the
shapes of its arrays and its cost, a carrier its matrices (:mod:`bioplaus.kinds`, :mod:`bioplaus.heads`,
:mod:`bioplaus.rules`); a head defined outside the package is counted like the built-in ones.
"""

from __future__ import annotations

import math

from bioplaus.limits import host_memory, human  # noqa: F401 -- human: re-exported, the estimate's unit
from bioplaus.models import NetSpec
from bioplaus.probes import Cost
from bioplaus.rules import Rule, compose, get_rule

FLOAT = 4  # bytes per float32


def head_parameter_table(spec: NetSpec, cfg) -> list[tuple[str, dict[str, int], dict[str, int]]]:
    """Per block (and ``out``): the local heads' trained weights and the fixed matrices, by part, beside the
    forward network's own parameters: ``[(name, {part: count trained}, {part: count fixed}), ...]``. The
    heads and carriers declare their arrays (``shapes``) and name the parts (an array two heads share is
    counted once, under the first); a tap inside a block prefixes its parts with its name."""
    rule = compose(cfg)
    K, T = spec.num_classes, cfg.target_proj_size
    rows = []
    for i, b in enumerate(spec.blocks):
        trained: dict[str, int] = {}
        fixed: dict[str, int] = {}
        for k, tap in enumerate(b.kind.taps(b)):
            seen: set[str] = set()  # the tap's array names: a shared projection once
            parts = [(head, name, shape, is_fixed) for head in rule.heads if head.applies(tap, i == 0 and k == 0)
                     for is_fixed, shapes in enumerate(head.shapes(tap, K, T)) for name, shape in shapes.items()]
            if rule.uses_projection:
                parts.append((None, "P", (K, T), True))
            for head, name, shape, is_fixed in parts:
                if name in seen:
                    continue
                seen.add(name)
                part = tap.name + " " * bool(tap.name) + (head.part(name, bool(is_fixed)) if head is not None
                                                          else "label projection P")
                table = fixed if is_fixed else trained
                table[part] = table.get(part, 0) + math.prod(shape)
        W_shape = b.kind.weight_shape(b)
        if rule.carrier is not None and W_shape is not None:  # fa and kolen-pollack keep a B per layer
            fixed.update({f"feedback {name}": math.prod(s) for name, s in rule.carrier.shapes(W_shape).items()})
        if rule.direct is not None:
            fixed.update({f"direct feedback {name}": math.prod(s)
                          for name, s in rule.direct.shapes(K, b.out_features).items()})
        rows.append((b.name, trained, fixed))
    out = rule.carrier.shapes((K, spec.out_features_in)) if rule.carrier is not None else {}
    if out:
        rows.append(("out", {}, {f"feedback {name}": math.prod(s) for name, s in out.items()}))
    return rows


def head_parameters(spec: NetSpec, cfg) -> int:
    """Weights of the local heads, fixed and feedback matrices of every block (and the output layer's)."""
    return sum(sum(t.values()) + sum(f.values()) for _, t, f in head_parameter_table(spec, cfg))

def estimate_bytes(cfg, spec: NetSpec, num_train: int, on_gpu: bool = False) -> int:
    """Bytes a training run of ``cfg`` on ``spec`` needs (see the module docstring)."""
    rule = get_rule(cfg.variant)
    P = spec.num_parameters + head_parameters(spec, cfg)
    states = {"adam": 2, "amsgrad": 3, "sgd": 1 if cfg.momentum else 0}[cfg.optim]
    largest_block = max(b.num_parameters(spec.batch_norm) for b in spec.blocks) if spec.blocks else 0
    param_bytes = FLOAT * (P * (1 + states) + largest_block)  # + one block's gradients at a time
    N = cfg.batch_size
    maps = []  # elements per sample of each block's input and hidden output, and its largest op's workspace bytes
    c, h, w = spec.input_shape
    prev = c * h * w
    for b in spec.blocks:
        maps.append((prev, b.kind.footprint(b).hidden, b.kind.workspace_bytes(b, N, on_gpu, FLOAT)))
        prev = b.out_features
    heads = 2 if rule.heads else 0  # a head's map (sim's learned conv output) and its error

    def block_bytes(inp, out, work):
        return FLOAT * N * (inp + (4 + heads) * out) + work

    if rule.global_error:
        act = sum(FLOAT * N * (inp + 3 * out) for inp, out, _ in maps) + max(block_bytes(*m) for m in maps)
    else:
        act = max(block_bytes(*m) for m in maps) if maps else 0
    pad = 8  # crop padding, at most 4 pixels a side
    data = num_train * c * (h + pad) * (w + pad) + FLOAT * N * c * h * w
    return int(param_bytes + act + data)


def available_bytes(backend) -> tuple[int, str]:
    """(bytes available for a run, where): the GPU's free memory, or the host's available RAM."""
    if backend.is_gpu:
        free, _total = backend.xp.cuda.Device().mem_info
        return int(free), "the GPU has"
    return host_memory(), "this machine has"


def step_costs(spec: NetSpec, rule: Rule | str, batch: int, target_proj_size: int = 128) -> tuple[list[Cost], Cost]:
    """What one training step of ``rule`` (a Rule or a variant name) costs on a batch: per block, its
    kind's (the encoder's forward and weight gradient, the error to its input where the rule sends one
    up, batch norm and φ's passes), its heads' and its carrier's or direct error's; and the output
    layer's. Counted from the shapes (:class:`bioplaus.probes.Cost`)."""
    rule = get_rule(rule) if isinstance(rule, str) else rule
    K, N, costs = spec.num_classes, batch, []
    for i, b in enumerate(spec.blocks):
        cost = b.kind.cost(b, N, need_dx=rule.carrier is not None and i > 0)
        for k, tap in enumerate(b.kind.taps(b)):
            for head in rule.heads:
                if head.applies(tap, i == 0 and k == 0):
                    cost += head.cost(tap, N, K, target_proj_size)
        W_shape = b.kind.weight_shape(b)
        if rule.carrier is not None and W_shape is not None:
            cost += rule.carrier.cost(W_shape)
        if rule.direct is not None:
            cost += rule.direct.cost(N, K, b.out_features)
        costs.append(cost)
    macs = N * spec.out_features_in * K  # the output layer: forward, dW (and the error into the last block)
    return costs, Cost(macs, macs * (2 if rule.carrier is not None else 1))


def block_costs(spec: NetSpec, rule: Rule | str, batch: int, target_proj_size: int = 128) -> list[float]:
    """The work of one training step of each block under ``rule`` (a Rule or a variant name), the output
    layer's added to the last: FLOPs of its multiply-adds, plus one per float32 element its memory-bound
    passes stream (:func:`step_costs`). Used to balance a pipeline's stages."""
    costs, out = step_costs(spec, rule, batch, target_proj_size)
    work = [c.flops + c.bytes / FLOAT for c in costs]
    if work:
        work[-1] += out.flops + out.bytes / FLOAT
    return work
