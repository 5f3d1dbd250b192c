"""``--describe``: a readable listing of a network, its parameter count (the forward network's, as the
paper counts) and, listed apart, its local heads' weights and fixed matrices under the run's rule.

Above :mod:`bioplaus.models` (the shapes, each block's kind gives its line) and :mod:`bioplaus.budget`
(what the rule's heads hold), so neither of those needs the other's reader.
"""

from __future__ import annotations

from bioplaus.budget import head_parameter_table
from bioplaus.models import NetSpec, build_spec


def describe_model(cfg, input_shape: tuple[int, int, int], num_classes: int) -> str:
    """A readable listing of the network (each block's kind gives its line); the last line is
    ``parameters: <int>``."""
    spec = build_spec(cfg, input_shape, num_classes)
    nonlin = "LeakyReLU(0.01)" if cfg.nonlin == "leakyrelu" else "ReLU"
    c, h, w = input_shape
    lines = [f"{cfg.model} on {c}x{h}x{w} input, {num_classes} classes, variant {cfg.variant}"]
    for b in spec.blocks:
        lines.append(f"  {b.name:6s} {b.kind.describe(b, spec.batch_norm, nonlin, cfg.dropout)}"
                     f"   [{b.num_parameters(spec.batch_norm):,} params]")
    lines.append(f"  out    Dense {spec.out_features_in}->{num_classes}"
                 f"   [{spec.out_features_in * num_classes + num_classes:,} params]")
    lines += _local_lines(spec, cfg)
    lines.append("the count below is the forward network's (its blocks and output layer, as the paper counts); the "
                 "local heads and fixed matrices are not in it")
    lines.append(f"parameters: {spec.num_parameters}")
    return "\n".join(lines)


def _local_lines(spec: NetSpec, cfg) -> list[str]:
    """The heads' trained weights and the fixed matrices of each block, listed apart from the count."""
    rows = [(name, t, f) for name, t, f in head_parameter_table(spec, cfg) if t or f]
    if not rows:
        return [f"local heads and fixed matrices: none ({cfg.variant})"]
    total_t = sum(sum(t.values()) for _, t, _ in rows)
    total_f = sum(sum(f.values()) for _, _, f in rows)
    head = f"local heads (trained by their own losses) and fixed random matrices of {cfg.variant}"
    lines = [f"{head}: {total_t:,} trained, {total_f:,} fixed"]
    for name, trained, fixed in rows:
        parts = [f"{part} {n:,}" for part, n in trained.items()] + [f"{part} {n:,} (fixed)" for part, n in fixed.items()]
        lines.append(f"  {name:6s} " + ", ".join(parts))
    return lines
