#!/usr/bin/env python3
"""Reproduce the README figures from scratch: train one small run per variant, then draw them.

    python sims/figures.py                              # the README's setting (a few minutes on a CPU)
    python sims/figures.py --epochs 20 --num-hidden 1024 --num-layers 3
    python sims/figures.py --logs runs/my-runs/         # draw from existing logs, train nothing

Writes ``errors.png``, ``layer_dynamics.png``, ``depth.png``, ``angles.png``, ``similarity.png`` and
``paper_comparison.md`` to ``--out-dir`` (default ``docs/figures``). The run logs go to a new folder
``runs/small-runs-*`` (never overwritten) and are kept; the figures read only them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# Run from a checkout without installing: prefer the bioplaus package that sits beside sims/.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "bioplaus", "__init__.py")):
    sys.path.insert(0, _ROOT)

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bioplaus import analysis

DEFAULT_VARIANTS = ("glob", "pred", "sim", "predsim", "predsim-bpf")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="variants to train and compare")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-hidden", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "gpu"))
    p.add_argument("--runs-dir", default="runs", help="folder under which a new small-runs-* folder is made")
    p.add_argument("--logs", nargs="+", help="draw from these logs (paths, globs, folders) instead of training")
    p.add_argument("--out-dir", default=os.path.join("docs", "figures"))
    p.add_argument("--similarity-variant", default="predsim", help="the run whose S(h) is drawn")
    p.add_argument("--layer-variant", default="predsim", help="the run whose per-block dynamics are drawn")
    p.add_argument("--dpi", type=int, default=80)
    return p


def _pick(runs, variant: str):
    for r in runs:
        if r.config.variant == variant:
            return r
    return runs[-1]


def draw(runs, out_dir: str, similarity_variant: str = "predsim", layer_variant: str = "predsim",
         dpi: int = 80) -> list[str]:
    """Draw the README figures of ``runs`` into ``out_dir``; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def save(fig, name: str, scale: float = 1.0) -> None:
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=max(1, round(dpi * scale)), bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    save(analysis.plot_errors(runs), "errors.png")
    save(analysis.plot_layer_dynamics(_pick(runs, layer_variant), split="test"), "layer_dynamics.png")
    save(analysis.plot_depth(runs), "depth.png")
    save(analysis.plot_angles(runs), "angles.png")
    with_probe = [r for r in runs if r.probe.get("similarity")]
    if with_probe:
        # noisy 128x128 images compress badly: a lower resolution keeps the PNG small
        save(analysis.plot_similarity(_pick(with_probe, similarity_variant)), "similarity.png", scale=0.75)
    path = os.path.join(out_dir, "paper_comparison.md")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(analysis.comparison_markdown(analysis.paper_comparison(runs)) + "\n")
    written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.logs:
        paths = args.logs
    else:
        paths = analysis.make_small_runs(args.variants, out_dir=args.runs_dir, epochs=args.epochs,
                                         num_layers=args.num_layers, num_hidden=args.num_hidden,
                                         probe_every=1, seed=args.seed, extra={"device": args.device})
    runs = analysis.load_runs(*paths)
    for path in draw(runs, args.out_dir, args.similarity_variant, args.layer_variant, args.dpi):
        print(f"wrote {path}")
    print("from the logs: " + " ".join(r.path for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
