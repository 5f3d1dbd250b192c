"""How much memory a run needs, estimated from shapes before anything is allocated.

A configuration that cannot fit is bad input (one sentence with the estimate), not an allocation
failure an hour into a run. The estimate counts, in the training dtype (float32):

    parameters P (blocks, heads, output layer) and fixed matrices; gradients of one block at a time;
    optimizer state: 2 P (Adam), 3 P (AMSGrad), P (SGD with momentum);
    activations of one step: local rules hold one block at a time (its input, pre-activation, output,
    BN's normalised copy, the heads' maps and errors, an im2col buffer), backprop holds every block's
    cache until its backward;
    the training images in uint8 (once, padded for cropping) and one batch in float32.

It is an estimate (within a factor of about 1.5 of what the benchmarks measure), meant to catch
settings that are off by orders of magnitude, such as ``--feat-mult 1000``.
"""

from __future__ import annotations

import os

from bioplaus.heads import ReconHead
from bioplaus.models import NetSpec
from bioplaus.ops.conv import DEVICE_IM2COL_MAX_BYTES, IM2COL_MAX_BYTES
from bioplaus.rules import FeedbackAlignment, compose, get_rule

FLOAT = 4  # bytes per float32


def head_parameter_table(spec: NetSpec, cfg) -> list[tuple[str, dict[str, int], dict[str, int]]]:
    """Per block (and ``out``): the local heads' trained weights and the fixed matrices, by part, beside the
    forward network's own parameters: ``[(name, {part: count trained}, {part: count fixed}), ...]``."""
    rule = compose(cfg)
    K, T = spec.num_classes, cfg.target_proj_size
    rows = []
    for i, b in enumerate(spec.blocks):
        w = b.c_out * b.c_in * (b.kernel * b.kernel if b.kind == "conv" else 1)
        trained: dict[str, int] = {}
        fixed: dict[str, int] = {}
        has_sim_W = False
        for head in rule.heads:
            if head.name == "pred":
                outs = T if head.feedback else K
                trained["pred decoder"] = outs * b.dec_features + outs
                if head.feedback:
                    fixed["pred feedback B"] = outs * b.dec_features
            elif getattr(head, "learned", False) and not has_sim_W:  # a learned projection (shared)
                trained["sim projection"] = b.c_out * b.c_out * (9 if b.kind == "conv" else 1)
                has_sim_W = True
            elif isinstance(head, ReconHead) and i > 0:
                trained["recon decoder"] = w + b.c_in
        if rule.uses_projection:
            fixed["label projection P"] = K * T
        if isinstance(rule.carrier, FeedbackAlignment):  # fa and kolen-pollack keep a B per layer
            fixed["feedback B"] = w
        if rule.direct is not None:
            fixed["direct feedback D"] = K * b.out_features
        rows.append((b.name, trained, fixed))
    if isinstance(rule.carrier, FeedbackAlignment):
        rows.append(("out", {}, {"feedback B": K * spec.out_features_in}))
    return rows


def head_parameters(spec: NetSpec, cfg) -> int:
    """Weights of the local heads, fixed and feedback matrices of every block (and the output layer's)."""
    return sum(sum(t.values()) + sum(f.values()) for _, t, f in head_parameter_table(spec, cfg))


def estimate_bytes(cfg, spec: NetSpec, num_train: int, on_gpu: bool = False) -> int:
    """Bytes a training run of ``cfg`` on ``spec`` needs (see the module docstring)."""
    rule = get_rule(cfg.variant)
    P = spec.num_parameters + head_parameters(spec, cfg)
    states = {"adam": 2, "amsgrad": 3, "sgd": 1 if cfg.momentum else 0}[cfg.optim]
    largest_block = max((b.c_in * b.kernel * b.kernel * b.c_out if b.kind == "conv" else b.c_in * b.c_out)
                        for b in spec.blocks) if spec.blocks else 0
    param_bytes = FLOAT * (P * (1 + states) + largest_block)  # + one block's gradients at a time
    N = cfg.batch_size
    maps = []  # elements of each block's output map per sample, and of its input
    c, h, w = spec.input_shape
    prev = c * h * w
    for b in spec.blocks:
        side = b.size if b.kind == "conv" else 1
        out = b.c_out * side * side
        cols = b.c_in * b.kernel * b.kernel * side * side if b.kind == "conv" else 0
        maps.append((prev, out, cols))
        prev = b.out_features
    limit = DEVICE_IM2COL_MAX_BYTES if on_gpu else IM2COL_MAX_BYTES
    heads = 2 if rule.heads else 0  # a head's map (sim's learned conv output) and its error

    def block_bytes(inp, out, cols):
        return FLOAT * (N * (inp + (4 + heads) * out) + min(N * cols * FLOAT, limit) // FLOAT)

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
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "this machine has"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine has"
    except (ValueError, OSError, AttributeError):
        return 1 << 62, "this machine has"


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} EiB"


def block_costs(spec: NetSpec, variant: str, batch: int, target_proj_size: int = 128) -> list[float]:
    """Estimated FLOPs of one training step of each block under a local rule: its encoder forward and
    weight gradient, its heads forward and backward, and the similarity matrices (memory-bound passes
    are not counted; they scale with the same feature maps). Used to balance a pipeline's stages."""
    rule = get_rule(variant)
    K, N, costs = spec.num_classes, batch, []
    for i, b in enumerate(spec.blocks):
        pixels = b.size * b.size if b.kind == "conv" else 1
        k2 = b.kernel * b.kernel if b.kind == "conv" else 1
        macs = N * pixels * b.c_out * b.c_in * k2
        total = 2 * macs * (2 if rule.is_local or i == 0 else 3)  # forward + dW (+ dx under backprop)
        for head in rule.heads:
            if head.name == "pred":
                outs = target_proj_size if head.feedback else K
                total += 2 * N * b.dec_features * outs * 3  # decoder forward, its dW and the error to h
            else:
                if head.learned:
                    total += 2 * N * pixels * b.c_out * b.c_out * (9 if b.kind == "conv" else 1) * 3
                width = b.c_out if b.kind == "dense" or pixels > 1 else b.dec_features
                total += 4 * N * N * width  # S forward and backward
        total += 8 * N * pixels * b.c_out  # batch norm and φ, forward and backward (a few passes)
        costs.append(float(total))
    if costs:
        costs[-1] += 2 * N * spec.out_features_in * K * 2  # the output layer
    return costs
