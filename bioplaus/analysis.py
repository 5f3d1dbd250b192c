"""Analysis of run logs: tables and matplotlib figures. Reads only HDF5 run logs (:mod:`bioplaus.log`).

What the figures show (Nøkland & Eidnes 2019, §4-5):

- **optimization vs generalization** (:func:`plot_errors`): train error (solid) and test error
  (dashed) per epoch, one colour per rule. Local losses are weaker optimizers than backprop (higher
  train error) but can generalize as well or better (the gap between the two curves is smaller).
- **layer dynamics** (:func:`plot_layer_dynamics`, :func:`plot_depth`): every per-block series the log
  holds (its local losses ``L_pred``, the cross-entropy of its decoder, or pred-bpf's binary-code loss,
  ``L_sim = mean((S(h') − S(Y))²)``, the error of its local predictor, its weight and update norms, its
  angles), over epochs and over depth at one epoch. In local learning deeper blocks should reach lower
  local error: each block builds on the features of the one below.
- **alignment** (:func:`plot_angles`): for feedback-alignment heads the angle between the decoder's
  weights ``W`` and the fixed feedback matrix ``B`` that carries the error instead of ``Wᵀ``
  (``angle = arccos(<W, B> / (|W| |B|))``; it falls below 90° as ``W`` aligns with ``B``), and for any
  rule the angle between a block's actual update and the true backprop gradient on the probe batch.
- **similarity** (:func:`plot_similarity`): ``S(h)`` of each block on the fixed probe batch sorted by
  class, next to ``S(Y)``; the sim loss pulls ``S(h)`` towards the block structure of ``S(Y)``.
- **what each layer has learned** (:func:`layer_features` from a run's checkpoint, :func:`linear_probes`,
  :func:`cka_between`, :func:`effective_dimensionality`, :func:`label_alignments`, :func:`plot_representations`,
  :func:`plot_cka`; the measures themselves in :mod:`bioplaus.represent`): how linearly separable each
  block's output is, how similar two runs' blocks are (linear CKA), how many dimensions a block uses, and
  how close its ``S(h)`` is to ``S(Y)``. ``--probe-every`` logs the linear probe during a run
  (``probe_accuracy``).
- **paper comparison** (:func:`paper_comparison`, :func:`comparison_markdown`): the measured test
  error of each run beside the paper's number for the same dataset / model / variant
  (``bioplaus/paper_tables.json``, the project's copy of the paper's tables), with every way the
  run's configuration differs from the paper's recipe (``bioplaus/recipes.json``).

Plot functions return the matplotlib ``Figure``; they never call ``plt.show``. They accept an
optional ``ax``/``axes`` to draw into. Every plot gives a rule the same colour (:func:`rule_color`),
draws train solid and test dashed, names each rule once in its legend, tells layers apart by
position (a shade and a name at the line's end, or a panel each), and draws a panel for each series
the log holds, titled with the log's own description and labelled with its units
(:class:`Quantity`), never an empty one. :func:`make_small_runs` creates small logs for notebooks
and labs (in a temporary folder, removed when the process ends) through the run loop.

Tidy data: :func:`to_xarray` gives a run as an ``xarray.Dataset`` (dims epoch × layer), :func:`to_dataframe`
runs as a long ``pandas.DataFrame`` (one row per run × epoch × layer × series), :func:`runs_table` /
:func:`runs_csv` one row per run (the sweep report's ``results.csv``); xarray and pandas are the
optional extra ``bioplaus[analysis]``.
"""

from __future__ import annotations

import atexit
import glob as _glob
import json
import math
import os
import re
import shutil
import tempfile
import textwrap
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from bioplaus.log import Run, read_run
from bioplaus.represent import cka_matrix, label_alignment, linear_cka, participation_ratio, ridge_probe  # noqa: F401

# Datasets whose runs compare to another dataset's paper row, and what differs.
DATASET_ALIASES = {
    "fashion-mnist-mini": (
        "fashion-mnist", "the fashion-mnist-mini subset (6,000 train / 1,000 test images), not the full 60,000 / 10,000"
    ),
}
# Config fields that do not change what is learned (left out of the recipe comparison).
_IGNORED_FIELDS = ("dataset", "seed", "device", "data_dir", "probe_every")
BPF_VARIANTS = ("pred-bpf", "sim-bpf", "predsim-bpf")

RunLike = Run | str | os.PathLike


# ---------------------------------------------------------------------- loading
def _expand(source: str | os.PathLike) -> list[str]:
    s = os.fspath(source)
    if os.path.isdir(s):
        return sorted(p for p in _glob.glob(os.path.join(s, "*.h5")))
    if any(c in s for c in "*?["):
        return sorted(p for p in _glob.glob(s) if p.endswith(".h5"))
    return [s]


def load_runs(*sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Run]:
    """Read run logs given as paths, globs (``runs/*.h5``) or folders (every ``*.h5`` in it), in order.

    Each argument may also be a list of these. Raises :class:`bioplaus.log.LogError` for a path
    that is not a run log, and ValueError when nothing matched.
    """
    paths: list[str] = []
    for src in sources:
        items = [src] if isinstance(src, (str, os.PathLike)) else list(src)
        for item in items:
            paths.extend(_expand(item))
    if not paths:
        raise ValueError("no run logs matched " + ", ".join(map(str, sources)))
    return [read_run(p) for p in dict.fromkeys(paths)]


def _run(r: RunLike) -> Run:
    return r if isinstance(r, Run) else read_run(os.fspath(r))


def _runs(runs: RunLike | Sequence[RunLike]) -> list[Run]:
    if isinstance(runs, (Run, str, os.PathLike)):
        return [_run(runs)]
    return [_run(r) for r in runs]


def run_label(run: Run) -> str:
    """A short legend label: the variant, plus the network size (``predsim mlp 2x128``)."""
    c = run.config
    if c.model == "mlp":
        size = f"mlp {c.num_layers}x{c.num_hidden}"
    else:
        size = c.model + (f"({c.feat_mult:g}x)" if c.feat_mult != 1 else "")
    return f"{c.variant} {size}"


def _labels(runs: list[Run]) -> list[str]:
    """Labels by variant; the network size or seed is added only where variants repeat."""
    labels = [r.config.variant for r in runs]
    if len(set(labels)) < len(labels):
        labels = [run_label(r) for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} seed {r.config.seed}" for lab, r in zip(labels, runs)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} ({os.path.basename(r.path)})" for lab, r in zip(labels, runs)]
    return labels


def block_names(run: Run) -> list[str]:
    """The hidden blocks of a run in depth order (``fc1``, ``fc2``, ... or ``conv1``, ...), no ``out``."""
    names = [n for n in run.layers if n != "out"]

    def depth(name: str) -> tuple[int, str]:
        digits = "".join(ch for ch in name if ch.isdigit())
        return (int(digits) if digits else 0, name)

    return sorted(names, key=depth)


def epochs_of(run: Run) -> np.ndarray:
    """The 1-based epoch numbers of a run. (E,)"""
    return np.asarray(run.epochs.get("epoch", np.arange(1, run.num_epochs + 1)), dtype=float)


def layer_series(run: Run, series: str) -> np.ndarray:
    """One per-layer series stacked in depth order: (n_blocks, n_epochs), NaN where absent."""
    held = list(dict.fromkeys(name for b in run.layers.values() for name in b))
    if series not in held:
        raise ValueError(f"{run.path} holds no layer series {series!r}; it holds {', '.join(held) or 'none'}")
    n = run.num_epochs
    rows = [np.asarray(run.layers[b].get(series, np.full(n, np.nan)), dtype=float) for b in block_names(run)]
    return np.stack(rows) if rows else np.zeros((0, n))


def stack_epochs(runs: Sequence[RunLike], series: str) -> np.ndarray:
    """One epoch series of several runs as (n_runs, max_epochs), NaN-padded where a run is shorter."""
    rs = _runs(runs)
    width = max((r.num_epochs for r in rs), default=0)
    out = np.full((len(rs), width), np.nan)
    for i, r in enumerate(rs):
        v = np.asarray(r.epochs.get(series, []), dtype=float)
        out[i, : len(v)] = v
    return out


def summary_table(runs: Sequence[RunLike]) -> list[dict[str, Any]]:
    """One row per run: path, variant, model, dataset, status, epochs, final and best errors."""
    rows = []
    for r in _runs(runs):
        te = np.asarray(r.epochs.get("test_error", []), dtype=float)
        tr = np.asarray(r.epochs.get("train_error", []), dtype=float)
        rows.append({
            "path": r.path, "variant": r.config.variant, "model": run_label(r).split(" ", 1)[1],
            "dataset": r.config.dataset, "status": r.status, "epochs": r.num_epochs,
            "final_train_error": float(tr[-1]) if len(tr) else math.nan,
            "final_test_error": float(te[-1]) if len(te) else math.nan,
            "best_test_error": float(np.nanmin(te)) if len(te) and np.isfinite(te).any() else math.nan,
        })
    return rows


# ---------------------------------------------------------------------- what a log holds
SPLITS = ("train", "test")  # a per-layer series named train_<quantity> or test_<quantity> is one split of it
SPLIT_STYLE = {"train": "-", "test": "--", None: "-"}  # line style: train solid, test dashed, the rest solid
# Format-1 logs describe pred-bpf's local loss like pred's; their rule says what it was (its pred head's
# error comes back through a fixed feedback matrix, against the label's random binary code).
CODE_LOSS = "sigmoid binary cross-entropy of the block's decoder against the label's random binary code"


def series_info(run: Run, path: str) -> tuple[str, str]:
    """``(units, description)`` of a series as its log declares them; ``path`` as in the log:
    ``"epochs/test_error"``, ``"layers/fc1/weight_norm"``. ``("", "")`` where the log says nothing."""
    return run.info.get(path, ("", ""))


def layer_series_names(run: Run) -> list[str]:
    """The per-layer series the log holds, with at least one value in some layer: losses first, then
    errors, the other series, and angles (units ``degrees``) last, each group by name."""
    names: dict[str, None] = {}
    for series in run.layers.values():
        for name, values in series.items():
            if np.isfinite(np.asarray(values, dtype=float)).any():
                names[name] = None

    return sorted(names, key=lambda name: _panel_order(_split(name)[1], _units(run, name)))


def _panel_order(quantity: str, units: str) -> tuple[int, str]:
    """Losses first, then errors, the other series, and angles last; by name within each."""
    rank = 0 if quantity.startswith("loss") else 1 if quantity.startswith("error") else 3 if units == "degrees" else 2
    return rank, quantity


def _split(series: str) -> tuple[str | None, str]:
    """``("test", "loss_pred")`` for ``test_loss_pred``; ``(None, "weight_norm")`` for a series of no split."""
    head, _, rest = series.partition("_")
    return (head, rest) if head in SPLITS and rest else (None, series)


def _units(run: Run, series: str) -> str:
    for layer in run.layers:
        units, _ = series_info(run, f"layers/{layer}/{series}")
        if units:
            return units
    return ""


def _description(run: Run, series: str) -> str:
    description = next((d for layer in run.layers for _, d in [series_info(run, f"layers/{layer}/{series}")] if d), "")
    if series.endswith("loss_pred") and "binary" not in description:
        from bioplaus.rules import RULES

        if getattr(RULES.get(run.config.variant), "pred", None) == "feedback":  # where it was measured kept:
            return description.replace("local prediction loss of the block", CODE_LOSS).removeprefix("mean ")
    return description


@dataclass(frozen=True)
class Quantity:
    """What a panel shows: a per-layer series without its split (``loss_pred`` for ``train_loss_pred`` and
    ``test_loss_pred``), its units and what it is, as the log describes it. Two runs' series share a panel
    only when all three agree: pred's cross-entropy and pred-bpf's binary-code loss do not."""

    name: str
    units: str
    description: str

    @property
    def title(self) -> str:
        """The description without where it was measured (``... on the test set``) or asides in brackets."""
        text, before = self.description, None
        while text != before:  # innermost brackets first: "(... or sign(W))"
            text, before = re.sub(r"\s*\([^()]*\)", "", text), text
        text = re.sub(r"^mean |\s+on the (training batches|test set)$", "", text)
        return text or self.name.replace("_", " ")

    @property
    def ylabel(self) -> str:
        return self.name + (f" ({self.units})" if self.units not in ("", "1") else "")


def layer_quantities(run: Run) -> dict[Quantity, dict[str | None, str]]:
    """The quantities of a run's per-layer series, in :func:`layer_series_names` order: each maps its splits
    (``"train"``, ``"test"``, or None) to the series names in the log."""
    out: dict[Quantity, dict[str | None, str]] = {}
    by_name: dict[str, dict[str | None, str]] = {}
    for series in layer_series_names(run):
        split, name = _split(series)
        by_name.setdefault(name, {})[split] = series
    for name, splits in by_name.items():
        splits = {s: splits[s] for s in (*SPLITS, None) if s in splits}  # train before test
        main = splits.get("test") or next(iter(splits.values()))
        out[Quantity(name, _units(run, main), _description(run, main))] = splits
    return out


# ---------------------------------------------------------------------- colours and styles
# One colour per rule in every plot: the rules of bioplaus.rules.RULES in their order take these in turn
# (glob, the baseline, black); a "-bpf" rule takes a lighter shade of its rule's colour.
_PALETTE = ("#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#7b4173", "#e7ba52", "#3182bd", "#843c39")
_BPF = "-bpf"
TALK_STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 10,
              "xtick.labelsize": 10, "ytick.labelsize": 10, "lines.linewidth": 2.0, "lines.markersize": 4,
              "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
              "legend.frameon": False}  # the figures command's: larger lines and type, no box around legends


def rule_color(variant: str) -> str:
    """The colour of a learning rule, the same in every plot (a hex string). Registered rules take the
    palette in the order of ``bioplaus.rules.RULES``; ``X-bpf`` is a lighter ``X``; a rule this process does
    not know (a log of someone's own rule) gets a colour from its name."""
    from bioplaus.rules import RULES

    if variant.endswith(_BPF) and variant[: -len(_BPF)] in RULES:
        return _lighter(rule_color(variant[: -len(_BPF)]), 0.45)
    bases = [v for v in RULES if not (v.endswith(_BPF) and v[: -len(_BPF)] in RULES)]
    if variant in bases:
        return _PALETTE[bases.index(variant) % len(_PALETTE)]
    return _PALETTE[zlib.crc32(variant.encode()) % len(_PALETTE)]


def _lighter(color: str, t: float) -> str:
    """``color`` mixed with white (``t`` = 0: itself, 1: white)."""
    from matplotlib.colors import to_hex, to_rgb

    return to_hex(tuple(c + (1.0 - c) * t for c in to_rgb(color)))


def _depth_shade(color: str, i: int, n: int) -> str:
    """The i-th of n layers in a rule's colour: the first lightest, the deepest the colour itself."""
    return color if n < 2 else _lighter(color, 0.6 * (1 - i / (n - 1)))


def _rule_handles(variants: Sequence[str], labels: Sequence[str] | None = None) -> list:
    """Legend entries: each rule once, in its colour (or each label once, where runs of a rule differ)."""
    from matplotlib.lines import Line2D

    labels = list(labels) if labels is not None else list(variants)
    seen: dict[str, Any] = {}
    for v, lab in zip(variants, labels):
        seen.setdefault(lab, Line2D([], [], color=rule_color(v), label=lab))
    return list(seen.values())


def _split_handles(splits: Iterable[str | None]) -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color="0.4", ls=SPLIT_STYLE[s], label=s) for s in SPLITS if s in set(splits)]


def _setting(runs: Sequence[Run]) -> str:
    """Dataset and network of the runs, for a title: ``fashion-mnist-mini, mlp 2x128``."""
    datasets = " / ".join(dict.fromkeys(r.config.dataset for r in runs))
    models = " / ".join(dict.fromkeys(run_label(r).split(" ", 1)[1] for r in runs))
    return f"{datasets}, {models}"


def _finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(y)
    return np.asarray(x)[ok], y[ok]


# ---------------------------------------------------------------------- figures
def _axes(ax, n: int, figsize: tuple[float, float]):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(1, n, figsize=figsize, squeeze=False)
        return fig, list(axes[0])
    axes = list(np.atleast_1d(ax).ravel())
    if len(axes) != n:
        raise ValueError(f"expected {n} axes, got {len(axes)}")
    return axes[0].figure, axes


def _grid(axes, n: int, panel: tuple[float, float] = (3.7, 2.9), max_cols: int = 4):
    """``n`` panels: the given axes, or a new figure of rows of at most ``max_cols``; unused ones hidden."""
    import matplotlib.pyplot as plt

    if axes is not None:
        return _axes(axes, n, (0, 0))
    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, grid = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows + 0.7), squeeze=False)
    flat = list(grid.ravel())
    for axis in flat[n:]:
        axis.set_visible(False)
    return fig, flat[:n]


def _epoch_axis(axis) -> None:
    axis.set_xlabel("epoch")
    axis.xaxis.get_major_locator().set_params(integer=True)


def _legend_right(fig, handles) -> None:
    """One legend for the figure, outside the panels on the right."""
    if handles:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize="small")


def plot_errors(runs: RunLike | Sequence[RunLike], ax=None, labels: Sequence[str] | None = None):
    """Train (solid) and test (dashed) error vs epoch, in each run's rule colour (:func:`rule_color`).

    Two lines per run, in run order: train then test, labelled ``"<label> train"`` / ``"<label> test"``
    (labels: the variants, or what tells runs of one variant apart). Runs of one variant share its colour
    and differ by marker. The legend names each label once, then the two line styles. Returns the Figure.
    """
    rs = _runs(runs)
    labels = list(labels) if labels is not None else _labels(rs)
    fig, (axis,) = _axes(ax, 1, (7.5, 4.6))
    variants = [r.config.variant for r in rs]
    markers = {}
    for r, lab in zip(rs, labels):  # a marker only where runs of one rule must be told apart
        same = [label for v, label in zip(variants, labels) if v == r.config.variant]
        markers[lab] = "osD^vP*X"[same.index(lab) % 8] if len(set(same)) > 1 else None
    for r, lab in zip(rs, labels):
        x = epochs_of(r)
        col = rule_color(r.config.variant)
        for split in SPLITS:
            axis.plot(x, r.epochs[f"{split}_error"], SPLIT_STYLE[split], color=col, marker=markers[lab], ms=4,
                      label=f"{lab} {split}")
    _epoch_axis(axis)
    axis.set_ylabel("error (%)")
    axis.set_title(f"optimization (train, solid) vs generalization (test, dashed)\n{_setting(rs)}")
    handles = _rule_handles(variants, labels)
    for h in handles:
        h.set_marker(markers[h.get_label()] or "")
    axis.legend(handles=handles + _split_handles(SPLITS), fontsize="small", loc="upper left",
                bbox_to_anchor=(1.01, 1.0))
    axis.grid(alpha=0.3)
    return fig


def _label_line_end(axis, x: np.ndarray, y: np.ndarray, text: str, color: str) -> None:
    """Name a line at its last point (layers are told apart by position, not by a legend)."""
    if len(x):
        axis.annotate(text, (x[-1], y[-1]), xytext=(4, 0), textcoords="offset points", va="center",
                      fontsize="small", color=color)


def plot_layer_dynamics(run: RunLike, split: str = "both", axes=None):
    """A panel for every per-layer series the run's log holds (local losses and errors, weight and
    update norms, alignment angles: whatever its rule logs), over epochs; train solid, test dashed.

    Each layer is a line in the rule's colour, lighter for shallower layers, named at its end. Panels are
    titled with what the log says the series is, and labelled with its name and units (pred-bpf's
    binary-code loss is not pred's cross-entropy). ``split``: ``"both"``, ``"train"`` or ``"test"`` for
    the series measured on both. Returns the Figure.
    """
    if split not in ("both", *SPLITS):
        raise ValueError(f"split must be 'both', 'train' or 'test', not {split!r}")
    r = _run(run)
    quantities = layer_quantities(r)
    fig, axs = _grid(axes, max(1, len(quantities)))
    x = epochs_of(r)
    color = rule_color(r.config.variant)
    layers = block_names(r) + (["out"] if "out" in r.layers else [])
    drawn: set[str | None] = set()
    for axis, (q, splits) in zip(axs, quantities.items()):
        shown = {s: n for s, n in splits.items() if split == "both" or s in (split, None)} or splits
        with_data = [b for b in layers if any(np.isfinite(np.asarray(r.layers[b].get(n, []), float)).any()
                                               for n in shown.values())]
        for i, b in enumerate(with_data):
            shade = _depth_shade(color, i, len(with_data))
            for s, name in shown.items():
                xs, ys = _finite(x, r.layers[b].get(name, np.full(len(x), np.nan)))
                axis.plot(xs, ys, SPLIT_STYLE[s], marker="o", ms=3, color=shade, label=f"{b} {s or ''}".strip())
                drawn.add(s)
            name = shown.get("test") or next(iter(shown.values()))
            _label_line_end(axis, *_finite(x, r.layers[b].get(name, np.full(len(x), np.nan))), b, shade)
        axis.margins(x=0.15)
        _epoch_axis(axis)
        axis.set_ylabel(q.ylabel)
        axis.set_title(textwrap.fill(q.title, 42), fontsize="medium")
        axis.grid(alpha=0.3)
    if not quantities:
        axs[0].text(0.5, 0.5, "this log holds no per-layer series", ha="center", va="center",
                    transform=axs[0].transAxes)
    fig.suptitle(f"{r.config.variant} on {_setting([r])}: each block, per epoch (lighter: shallower)")
    fig.tight_layout()
    _legend_right(fig, _split_handles(drawn))
    return fig


def plot_depth(runs: RunLike | Sequence[RunLike], epoch: int | None = None, split: str = "test", axes=None,
               labels: Sequence[str] | None = None):
    """Every per-layer quantity the runs' logs hold, over block depth at one epoch (1-based; None: each
    run's last): one panel per quantity (:class:`Quantity`: runs share a panel only where their logs say
    it is the same thing), one line per run in its rule's colour. ``split`` picks train or test for the
    series measured on both. Returns the Figure.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    rs = _runs(runs)
    labels = list(labels) if labels is not None else _labels(rs)
    panels: dict[Quantity, list[tuple[Run, str, np.ndarray]]] = {}
    for r, lab in zip(rs, labels):
        e = r.num_epochs if epoch is None else int(epoch)
        if not 1 <= e <= r.num_epochs:
            raise ValueError(f"{r.path} has epochs 1..{r.num_epochs}, not {e}")
        names = block_names(r)
        for q, splits in layer_quantities(r).items():
            name = splits.get(split) or splits.get(None)
            if name is None:
                continue
            values = np.array([np.asarray(r.layers[b].get(name, np.full(r.num_epochs, np.nan)), float)[e - 1]
                               for b in names])
            if np.isfinite(values).any():
                panels.setdefault(q, []).append((r, lab, values))
    panels = dict(sorted(panels.items(), key=lambda item: (*_panel_order(item[0].name, item[0].units),
                                                           item[0].description)))
    fig, axs = _grid(axes, max(1, len(panels)))
    for axis, (q, lines) in zip(axs, panels.items()):
        for r, lab, values in lines:
            xs, ys = _finite(np.arange(1, len(values) + 1), values)
            axis.plot(xs, ys, "-o", ms=4, color=rule_color(r.config.variant), label=lab)
        depth = max(len(v) for _, _, v in lines)
        names = {tuple(block_names(r)) for r, _, _ in lines}
        axis.set_xticks(np.arange(1, depth + 1))
        if len(names) == 1:
            axis.set_xticklabels(next(iter(names)))
        axis.set_xlabel("block (depth)")
        axis.set_ylabel(q.ylabel)
        axis.set_title(textwrap.fill(q.title, 42), fontsize="medium")
        axis.grid(alpha=0.3)
    when = "the last epoch" if epoch is None else f"epoch {epoch}"
    fig.suptitle(f"each block at {when} ({split} where measured on both), {_setting(rs)}")
    fig.tight_layout()
    _legend_right(fig, _rule_handles([r.config.variant for r in rs], labels))
    return fig


def angle_quantities(runs: Sequence[Run]) -> list[Quantity]:
    """The per-layer quantities in degrees (as the logs' units say) that hold a value in some run."""
    out: dict[Quantity, None] = {}
    for r in runs:
        for q in layer_quantities(r):
            if q.units == "degrees":
                out[q] = None
    return sorted(out, key=lambda q: (*_panel_order(q.name, q.units), q.description))


def plot_angles(runs: RunLike | Sequence[RunLike], axes=None, labels: Sequence[str] | None = None):
    """Every angle the logs hold (units ``degrees``), per epoch: a bpf decoder's weights against its
    feedback matrix (``fa_angle``), a layer's B or sign(W) against its W (``fb_angle``), each block's update
    against the true backprop gradient (``bp_angle``, probe epochs only).

    One row per angle, one column per layer (layers are panels), one line per run in its rule's colour;
    the legend names each rule once. Only angles some run logs get a row. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    rs = _runs(runs)
    labels = list(labels) if labels is not None else _labels(rs)
    quantities = angle_quantities(rs)
    held = [layer_quantities(r) for r in rs]
    layers = list(dict.fromkeys(b for r in rs for b in block_names(r) + (["out"] if "out" in r.layers else [])))

    def values(r: Run, b: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        return _finite(epochs_of(r), r.layers.get(b, {}).get(name, np.full(r.num_epochs, np.nan)))

    cells = {(q, b) for r, qs in zip(rs, held) for q in quantities for b in layers
             for name in qs.get(q, {}).values() if len(values(r, b, name)[1])}
    layers = [b for b in layers if any((q, b) in cells for q in quantities)]
    rows, cols = max(1, len(quantities)), max(1, len(layers))
    if axes is None:
        fig, grid = plt.subplots(rows, cols, figsize=(3.3 * cols + 1.2, 2.7 * rows + 0.8), squeeze=False,
                                 sharex=True)
    else:
        fig, flat = _axes(axes, rows * cols, (0, 0))
        grid = np.array(flat, dtype=object).reshape(rows, cols)
    for i, q in enumerate(quantities):
        for j, b in enumerate(layers):
            axis = grid[i][j]
            if (q, b) not in cells:
                axis.set_visible(False)
                continue
            for r, lab, qs in zip(rs, labels, held):
                for s, name in qs.get(q, {}).items():
                    xs, ys = values(r, b, name)
                    if len(ys):
                        axis.plot(xs, ys, SPLIT_STYLE[s], marker="o", ms=3, color=rule_color(r.config.variant),
                                  label=lab)
            axis.axhline(90, color="0.6", lw=0.8, ls=":")
            axis.set_title(b if i == 0 or (quantities[i - 1], b) not in cells else "", fontsize="medium")
            axis.set_ylabel(textwrap.fill(q.title, 34) + " (°)" if j == 0 or (q, layers[j - 1]) not in cells else "",
                            fontsize="small")
            axis.grid(alpha=0.3)
            _epoch_axis(axis)
    if not quantities:
        grid[0][0].text(0.5, 0.5, "no angles in these logs (the probe needs --probe-every 1)", ha="center",
                        va="center", transform=grid[0][0].transAxes)
    fig.suptitle(f"alignment angles per layer (90°: unrelated, 0°: the same direction), {_setting(rs)}")
    fig.tight_layout()
    _legend_right(fig, _rule_handles([r.config.variant for r in rs], labels))
    return fig


def similarity_snapshots(run: RunLike, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs (S,), S(h) (S, B, B), S(Y) (B, B)) of one block, rows/columns sorted by class."""
    r = _run(run)
    p = r.probe
    if "similarity" not in p or layer not in p["similarity"]:
        raise ValueError(f"{r.path} has no probe similarity for {layer!r} (run with --probe-every 1)")
    order = np.argsort(p["labels"], kind="stable")
    S = p["similarity"][layer][:, order][:, :, order]  # (S, B, B)
    target = p["target_similarity"][order][:, order]  # (B, B)
    return np.asarray(p["epochs"], dtype=int), S, target


def plot_similarity(run: RunLike, epochs: Sequence[int] | None = None, layers: Sequence[str] | None = None):
    """Image grid: one row per block, one column per chosen probe epoch, then ``S(Y)`` in the last column.

    ``epochs``: probe epochs to show (default: up to four, evenly spaced, always the first and last).
    Images use the probe batch sorted by class, colour range [-1, 1]. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    r = _run(run)
    layers = list(layers) if layers is not None else [b for b in block_names(r) if b in r.probe.get("similarity", {})]
    if not layers:
        raise ValueError(f"{r.path} has no probe similarity matrices (run with --probe-every 1)")
    have = [int(e) for e in r.probe["epochs"]]
    if epochs is None:
        idx = sorted(set(np.linspace(0, len(have) - 1, min(4, len(have))).round().astype(int)))
        epochs = [have[i] for i in idx]
    missing = [e for e in epochs if e not in have]
    if missing:
        raise ValueError(f"no probe snapshot at epoch {missing[0]}; probe epochs are {have}")
    ncol = len(epochs) + 1
    fig, grid = plt.subplots(len(layers), ncol, figsize=(2.1 * ncol + 0.6, 2.1 * len(layers) + 0.4),
                             squeeze=False)
    image = None
    for i, layer in enumerate(layers):
        eps, S, target = similarity_snapshots(r, layer)
        for j, e in enumerate(epochs):
            axis = grid[i][j]
            image = axis.imshow(S[list(eps).index(e)], vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
            axis.set_title(f"{layer}, epoch {e}", fontsize="small")
        grid[i][-1].imshow(target, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
        grid[i][-1].set_title("S(Y) target", fontsize="small")
        for axis in grid[i]:
            axis.set_xticks([])
            axis.set_yticks([])
            axis.spines[:].set_visible(True)  # a frame around every image, whatever the style
    fig.suptitle(f"{r.config.variant} on {_setting([r])}: S(h) of the probe batch (sorted by class) vs S(Y)")
    bar = fig.colorbar(image, ax=[a for row in grid for a in row], shrink=0.8)
    bar.set_label("similarity S (cosine of two examples)")
    return fig


# ---------------------------------------------------------------------- paper comparison
@lru_cache(maxsize=1)
def paper_tables() -> dict[str, Any]:
    """The paper's result tables (``bioplaus/paper_tables.json``): test errors in percent."""
    return json.loads(resources.files("bioplaus").joinpath("paper_tables.json").read_text(encoding="utf-8"))


def paper_model_key(model: str, feat_mult: float = 1.0, cutout: bool = False, num_layers: int = 3,
                    num_hidden: int = 1024) -> str:
    """The paper's name of a network: ``mlp-3x1024``, ``vgg8b``, ``vgg11b(3x)+cutout``; a wide ResNet is the
    paper's reference row, ``wrn (reference, global only)`` (a WRN-28-10 trained by backprop, from the literature)."""
    if model.startswith("wresnet"):
        return "wrn+cutout (reference, global only)" if cutout else "wrn (reference, global only)"
    if model == "mlp":
        key = f"mlp-{num_layers}x{num_hidden}"
    else:
        key = model + (f"({feat_mult:g}x)" if feat_mult != 1 else "")
    return key + ("+cutout" if cutout else "")


def paper_test_error(dataset: str, model_key: str, variant: str) -> float | None:
    """The paper's test error (percent) for dataset / model key (``paper_model_key``) / variant, or None."""
    t = paper_tables()
    if variant in BPF_VARIANTS:
        rows, col = [dict(r) for r in t["backprop_free"]["rows"] if r["dataset"] == dataset], variant
    elif variant == "glob+sim":
        rows, col = [dict(r) for r in t["glob_plus_sim"]["rows"] if r["dataset"] == dataset], variant
    else:
        rows, col = t["tables"].get(dataset, {}).get("rows", []), variant
    for row in rows:
        if row["model"] == model_key:
            return row.get(col)
    return None


def _paper_setting(run: Run) -> tuple[str, str, list[str]]:
    """(paper dataset, paper model key, notes) nearest to a run: the mlp row of the dataset for mlps."""
    c = run.config
    notes = []
    dataset = c.dataset
    if dataset in DATASET_ALIASES:
        dataset, why = DATASET_ALIASES[dataset]
        notes.append(why)
    key = paper_model_key(c.model, c.feat_mult, c.cutout, c.num_layers, c.num_hidden)
    if c.model.startswith("wresnet") and c.model.removesuffix("a") != "wresnet28-10":
        notes.append(f"network {c.model}, the paper's reference row is a WRN-28-10")
    if c.model == "mlp":
        t = paper_tables()["tables"].get(dataset, {}).get("rows", [])
        mlps = [r["model"] for r in t if r["model"].startswith("mlp-")]
        if mlps and key not in mlps:
            notes.append(f"network {key}, paper {mlps[0]}")
            key = mlps[0]
    return dataset, key, notes


def _recipe_name(dataset: str, run: Run, model_key: str) -> str:
    c = run.config
    mult = f"-{c.feat_mult:g}x" if c.model != "mlp" and c.feat_mult != 1 else ""
    return f"{dataset}-{c.model}{mult}-{c.variant}" + ("-cutout" if "+cutout" in model_key else "")


def _config_differences(run: Run, recipe: dict[str, Any]) -> list[str]:
    c = run.config
    ours = {k: getattr(c, k) for k in c.field_names() if k not in _IGNORED_FIELDS}
    out = []
    for key, want in recipe.items():
        if key in _IGNORED_FIELDS or key not in ours:
            continue
        have = ours[key]
        if isinstance(want, list):
            want = tuple(want)
        if have != want and not (isinstance(have, float) and isinstance(want, (int, float))
                                 and math.isclose(have, want)):
            out.append(f"{key} {_fmt(have)} (paper {_fmt(want)})")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(map(str, v)) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def paper_comparison(runs: RunLike | Sequence[RunLike]) -> list[dict[str, Any]]:
    """Measured test error of each run beside the paper's, matched by dataset / model / variant.

    Each row: ``run`` (path), ``variant``, ``dataset``, ``model`` (the paper's key the run was matched
    to), ``epochs`` (completed), ``status``, ``test_error`` (last epoch, %), ``best_test_error``,
    ``paper_test_error`` (% or None), ``recipe`` (the paper's recipe name or None), ``matches_paper``
    (True when nothing differs) and ``differences`` (list of sentences: dataset subset, network
    size, every configuration field that differs from the recipe, an unfinished run).
    """
    rows = []
    for r in _runs(runs):
        c = r.config
        dataset, key, notes = _paper_setting(r)
        paper = paper_test_error(dataset, key, c.variant)
        recipe_name = _recipe_name(dataset, r, key)
        try:
            from bioplaus.recipes import get_recipe

            recipe = get_recipe(recipe_name)
        except ValueError:
            recipe, recipe_name = None, None
        diffs = list(notes)
        if recipe is not None:
            diffs += [d for d in _config_differences(r, recipe)
                      if not (c.model == "mlp" and d.startswith(("num_layers", "num_hidden")) and
                              any(n.startswith("network") for n in notes))]
        elif paper is None:
            diffs.append("the paper has no run with this dataset, model and variant")
        if r.status != "completed":
            diffs.append(f"run {r.status} after {r.num_epochs} epochs")
        te = np.asarray(r.epochs.get("test_error", []), dtype=float)
        rows.append({
            "run": r.path, "variant": c.variant, "dataset": c.dataset, "model": key,
            "epochs": r.num_epochs, "status": r.status,
            "test_error": float(te[-1]) if len(te) else math.nan,
            "best_test_error": float(np.nanmin(te)) if len(te) and np.isfinite(te).any() else math.nan,
            "paper_test_error": paper, "recipe": recipe_name,
            "matches_paper": not diffs, "differences": diffs,
        })
    return rows


def comparison_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of :func:`paper_comparison` rows."""
    lines = ["| variant | dataset | model | epochs | test error (%) | paper (%) | differs from the paper's run |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        paper = "—" if row["paper_test_error"] is None else f"{row['paper_test_error']:.2f}"
        diff = "; ".join(row["differences"]) or "same setting"
        lines.append(f"| {row['variant']} | {row['dataset']} | {row['model']} | {row['epochs']} | "
                     f"{row['test_error']:.2f} | {paper} | {diff} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- writing figures
FIGURE_FORMATS = ("png", "svg", "pdf")


def figure_bytes(fig, fmt: str = "png", dpi: float = 150) -> bytes:
    """``fig`` as ``fmt`` bytes (png, svg or pdf; tight bounding box) carrying bioplaus's mark where the
    format has room for one (see :mod:`bioplaus.files`): a PNG ``Software`` text chunk, a comment after an
    SVG's XML declaration, a PDF's ``/Creator``. No date is written, so the same figure gives the same
    bytes. Closes ``fig``."""
    import io

    import matplotlib
    import matplotlib.pyplot as plt

    from bioplaus import __version__
    from bioplaus.files import PNG_SOFTWARE, TEXT_MARK

    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; choose one of {', '.join(FIGURE_FORMATS)}")
    software = f"{PNG_SOFTWARE} {__version__} (matplotlib {matplotlib.__version__})"
    metadata = {"png": {"Software": software}, "svg": {"Creator": software, "Date": None},
                "pdf": {"Creator": software, "CreationDate": None}}[fmt]
    buf = io.BytesIO()
    try:
        with matplotlib.rc_context({"svg.hashsalt": PNG_SOFTWARE}):  # fixed SVG element ids
            fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
    finally:
        plt.close(fig)
    data = buf.getvalue()
    if fmt == "svg":  # a comment right after the XML declaration: where files.check_outputs looks
        declaration, _, rest = data.partition(b"\n")
        data = declaration + b"\n" + f"{TEXT_MARK} {__version__} (matplotlib {matplotlib.__version__}) -->\n".encode() + rest
    return data


def save_figure(fig, path: str | os.PathLike, dpi: float = 150) -> str:
    """Write ``fig`` to ``path`` (its format from the suffix: png, svg or pdf) with bioplaus's mark, as the
    figures command writes its own (:func:`figure_bytes`; closes ``fig``): a file already at ``path`` is
    replaced only when bioplaus wrote it, otherwise :class:`bioplaus.files.PathError` and nothing is written.
    Returns the path. The notebooks save the README's figure of theirs with it."""
    from bioplaus import files

    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"a figure's path ends in .png, .svg or .pdf, not {path!r}")
    return files.write_outputs([files.Output.figure(path, figure_bytes(fig, fmt, dpi), fmt)], "path")[0]


def figure_png(fig, dpi: float = 150) -> bytes:
    """``fig`` as PNG bytes carrying bioplaus's mark (:func:`figure_bytes`); closes ``fig``."""
    return figure_bytes(fig, "png", dpi)


# ---------------------------------------------------------------------- making small runs
class RunFailed(RuntimeError):
    """A small run that did not complete; ``result`` is its :class:`bioplaus.runner.RunResult` (its status
    and exit code: diverged, interrupted, storage)."""

    def __init__(self, variant: str, result) -> None:
        super().__init__(f"the {variant} run ended {result.status}: {result.message}")
        self.result = result


def small_run_configs(variants: Sequence[str], epochs: int = 3, num_layers: int = 1, num_hidden: int = 64,
                      probe_every: int = 1, seed: int = 1, extra: dict[str, Any] | None = None) -> list:
    """The configurations :func:`make_small_runs` trains, each checked as a run checks it before it writes
    anything (:func:`bioplaus.runner.check_run`: the device, the memory, the data); raises
    :class:`bioplaus.runner.BadInput`."""
    from bioplaus.runner import check_run, resolve

    configs = [resolve({"variant": variant, "epochs": epochs, "num_layers": num_layers, "num_hidden": num_hidden,
                        "probe_every": probe_every, "seed": seed, "device": "cpu", **(extra or {})})
               for variant in variants]
    for cfg in configs:
        check_run(cfg)
    return configs


def make_small_runs(variants: Sequence[str], out_dir: str | os.PathLike | None = None, epochs: int = 3,
                    num_layers: int = 1, num_hidden: int = 64, probe_every: int = 1, seed: int = 1,
                    extra: dict[str, Any] | None = None, progress: bool = False,
                    threads: int | None = None) -> list[str]:
    """Train one small run per variant with :func:`bioplaus.runner.run` and return the log paths.

    The logs go to a new folder ``small-runs-*`` under ``out_dir``, kept (nothing is ever overwritten).
    Without ``out_dir`` (the notebooks and labs) they go to a new temporary folder that is removed when
    this Python process ends (a notebook's kernel stops), so running a notebook leaves nothing in the
    checkout; :func:`load_runs` reads logs into memory, so the figures need them only while loading.
    ``extra`` holds further configuration fields (``{"lr": 1e-3}``); ``threads`` the runs' BLAS threads, as
    ``--threads`` (None: the default). Defaults: a 1x64 mlp on the
    embedded fashion-mnist-mini for 3 epochs, CPU, probe every epoch. Raises
    :class:`bioplaus.runner.BadInput` for a configuration that cannot run (every one is checked, with
    :func:`small_run_configs`, before anything is made), and
    :class:`RunFailed` (a RuntimeError) when a run does not complete.
    """
    from bioplaus.runner import run

    configs = small_run_configs(variants, epochs, num_layers, num_hidden, probe_every, seed, extra)
    if out_dir is None:
        folder = tempfile.mkdtemp(prefix="bioplaus-small-runs-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        print(f"training {len(variants)} small run(s) in {folder} (removed when this Python process ends)")
    else:
        os.makedirs(out_dir, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="small-runs-", dir=os.fspath(out_dir))
    paths = []
    for variant, cfg in zip(variants, configs):
        path = os.path.join(folder, f"{variant}.h5")
        result = run(cfg, out=path, progress=progress, threads=threads)
        if result.status != "completed":
            raise RunFailed(variant, result)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------- what each layer has learned
@dataclass(frozen=True, eq=False)  # arrays inside: compared by identity
class Features:
    """Each block's output on the linear probe's fixed images (:func:`bioplaus.train.probe_sets`: the first
    ``PROBE_TRAIN`` training and ``PROBE_TEST`` test images), computed by the engine's own eval forward from
    a run's checkpoint: ``train``/``test`` hold one ``(N, D)`` float32 array per block of ``blocks``."""

    variant: str
    blocks: tuple[str, ...]
    train: tuple[np.ndarray, ...]
    y_train: np.ndarray
    test: tuple[np.ndarray, ...]
    y_test: np.ndarray
    num_classes: int


def layer_features(run: RunLike) -> Features:
    """The blocks' features of a run's network as its checkpoint holds it (the last epoch's, or the epoch
    it stopped at), on the CPU; the data is loaded as the run's configuration names it. Raises
    :class:`bioplaus.checkpoint.CheckpointError` when the run kept no checkpoint (``--keep-checkpoint none``)."""
    from bioplaus import files
    from bioplaus.backend import NUMPY
    from bioplaus.checkpoint import load_checkpoint, upgrade
    from bioplaus.runner import load_data, make_trainer
    from bioplaus.train import block_features, probe_sets

    r = _run(run)
    state, meta = load_checkpoint(files.checkpoint_path(r.path))
    dataset = load_data(r.config)
    trainer = make_trainer(r.config, NUMPY, dataset)
    trainer.load_state_dict(upgrade(state, meta["checkpoint_format"], [b.name for b in trainer.spec.blocks]))
    x_train, y_train, x_test, y_test = probe_sets(dataset, NUMPY)
    net = trainer.net
    return Features(r.config.variant, tuple(b.name for b in net.blocks), tuple(block_features(net, x_train)), y_train,
                    tuple(block_features(net, x_test)), y_test, net.num_classes)


def _features(source: RunLike | Features) -> Features:
    return source if isinstance(source, Features) else layer_features(source)


def linear_probes(source: RunLike | Features) -> dict[str, float]:
    """Each block's linear-probe test accuracy in % (:func:`bioplaus.represent.ridge_probe`: ridge regression
    to one-hot labels on the fixed training images, scored on the fixed test images); the same numbers the
    run's ``probe_accuracy`` series logs at a probe epoch."""
    f = _features(source)
    return {b: ridge_probe(a, f.y_train, t, f.y_test, f.num_classes) for b, a, t in zip(f.blocks, f.train, f.test)}


def effective_dimensionality(source: RunLike | Features) -> dict[str, float]:
    """Each block's participation ratio on the fixed test images (:func:`bioplaus.represent.participation_ratio`)."""
    f = _features(source)
    return {b: participation_ratio(t) for b, t in zip(f.blocks, f.test)}


def label_alignments(source: RunLike | Features) -> dict[str, dict[str, float]]:
    """Each block's ``S(h)`` against the labels' ``S(Y)`` on the fixed test images: the sim loss and the
    correlation of the off-diagonal entries (:func:`bioplaus.represent.label_alignment`)."""
    f = _features(source)
    return {b: label_alignment(t, f.y_test, f.num_classes) for b, t in zip(f.blocks, f.test)}


def cka_between(a: RunLike | Features, b: RunLike | Features) -> np.ndarray:
    """Linear CKA between every block of run ``a`` (rows) and every block of run ``b`` (columns) on the same
    fixed test images (:func:`bioplaus.represent.cka_matrix`)."""
    fa, fb = _features(a), _features(b)
    if not np.array_equal(fa.y_test, fb.y_test):
        raise ValueError("CKA compares two runs on the same images: these runs were made on different data")
    return cka_matrix(list(fa.test), list(fb.test))


def plot_representations(sources: Sequence[RunLike | Features], axes=None):
    """Three panels over block depth, one line per run in its rule's colour: linear-probe test accuracy,
    effective dimensionality (participation ratio) and the correlation of ``S(h)`` with the labels' ``S(Y)``.
    Returns the Figure."""
    feats = [_features(s) for s in sources]
    panels = [("linear probe test accuracy (%)", linear_probes),
              ("effective dimensionality (participation ratio)", effective_dimensionality),
              ("corr(S(h), S(Y)) off the diagonal",
               lambda f: {k: v["correlation"] for k, v in label_alignments(f).items()})]
    fig, axs = _grid(axes, len(panels), panel=(4.0, 3.2), max_cols=3)
    for axis, (title, measure) in zip(axs, panels):
        for f in feats:
            values = measure(f)
            axis.plot(np.arange(1, len(values) + 1), list(values.values()), "-o", ms=4, color=rule_color(f.variant),
                      label=f.variant)
        depth = max(len(f.blocks) for f in feats)
        axis.set_xticks(np.arange(1, depth + 1))
        axis.set_xlabel("block (depth)")
        axis.set_title(textwrap.fill(title, 40), fontsize="medium")
        axis.grid(alpha=0.3)
    fig.suptitle("what each block has learned (fixed test images)")
    fig.tight_layout()
    _legend_right(fig, _rule_handles([f.variant for f in feats]))
    return fig


def plot_cka(a: RunLike | Features, b: RunLike | Features, ax=None):
    """The linear CKA map between the blocks of two runs (:func:`cka_between`): rows ``a``'s blocks, columns
    ``b``'s, 0 (white) to 1 (dark), each cell written out. Returns the Figure."""
    fa, fb = _features(a), _features(b)
    m = cka_between(fa, fb)
    fig, (axis,) = _axes(ax, 1, (1.2 * len(fb.blocks) + 2.2, 1.0 * len(fa.blocks) + 1.4))
    image = axis.imshow(m, vmin=0.0, vmax=1.0, cmap="Greys")
    for (i, j), v in np.ndenumerate(m):
        axis.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v > 0.6 else "black", fontsize="small")
    axis.set_xticks(range(len(fb.blocks)), fb.blocks)
    axis.set_yticks(range(len(fa.blocks)), fa.blocks)
    axis.set_xlabel(fb.variant, color=rule_color(fb.variant))
    axis.set_ylabel(fa.variant, color=rule_color(fa.variant))
    axis.set_title(f"linear CKA, {fa.variant} × {fb.variant}")
    fig.colorbar(image, ax=axis, fraction=0.046)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- tidy data (xarray, pandas)
def _optional(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this needs {module}: pip install 'bioplaus[analysis]'") from None


def _layers_of(run: Run) -> list[str]:
    return block_names(run) + (["out"] if "out" in run.layers else [])


def to_xarray(run: RunLike):
    """A run as an ``xarray.Dataset`` with dims ``epoch`` × ``layer`` (blocks in depth order, then ``out``).

    Variables: every epoch series of the log (dim ``epoch``) and every per-layer series (dims ``epoch``,
    ``layer``; NaN where a layer has none), each with the ``units`` and ``description`` attributes of the
    log; and, where the log holds the probe, ``probe_labels`` (``probe_sample``), ``target_similarity``
    (``probe_sample`` × ``probe_sample_2``) and ``similarity`` (``probe_epoch`` × ``layer`` × ``probe_sample``
    × ``probe_sample_2``). Attributes: the log's root attributes (``config`` as its JSON), ``path``, and
    every configuration field under its own name (tuples as lists, None as ``""``, booleans as ``0``/``1``,
    so that ``ds.to_netcdf()`` can write them). Needs ``bioplaus[analysis]``.
    """
    xr = _optional("xarray")
    r = _run(run)
    layers = _layers_of(r)
    data_vars: dict[str, Any] = {}
    for name, values in r.epochs.items():
        if name != "epoch":
            units, description = series_info(r, f"epochs/{name}")
            data_vars[name] = (("epoch",), np.asarray(values, dtype=float), {"units": units, "description": description})
    for name in dict.fromkeys(n for b in layers for n in r.layers[b]):
        grid = np.full((r.num_epochs, len(layers)), np.nan)
        for j, b in enumerate(layers):
            if name in r.layers[b]:
                grid[:, j] = r.layers[b][name]
        key = name if name not in data_vars else f"{name}_per_layer"
        data_vars[key] = (("epoch", "layer"), grid, {"units": _units(r, name), "description": _description(r, name)})
    coords: dict[str, Any] = {"epoch": epochs_of(r).astype(int), "layer": layers}
    p = r.probe
    if p.get("similarity") and "labels" in p:
        n = len(p["labels"])
        S = np.full((len(p["epochs"]), len(layers), n, n), np.nan, dtype=np.float32)
        for j, b in enumerate(layers):
            if b in p["similarity"]:
                S[:, j] = p["similarity"][b]
        data_vars["probe_labels"] = (("probe_sample",), np.asarray(p["labels"]),
                                     {"units": "1", "description": "class labels of the fixed probe batch"})
        data_vars["target_similarity"] = (("probe_sample", "probe_sample_2"), np.asarray(p["target_similarity"]),
                                          {"units": "1", "description": "label similarity matrix S(Y) of the probe batch"})
        data_vars["similarity"] = (("probe_epoch", "layer", "probe_sample", "probe_sample_2"), S,
                                   {"units": "1", "description": "each block's similarity matrix S(h) on the probe batch"})
        coords["probe_epoch"] = np.asarray(p["epochs"]).astype(int)
    attrs: dict[str, Any] = {**r.attrs, "path": r.path}
    for key, value in r.config.to_dict().items():
        attrs[key] = _netcdf_value(value)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _netcdf_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return value


def to_dataframe(runs: RunLike | Sequence[RunLike], dropna: bool = True):
    """Runs as one long (tidy) ``pandas.DataFrame``: one row per run × epoch × layer × series.

    Columns: ``run`` (the log's path), ``variant``, ``model``, ``dataset``, ``seed``, ``epoch``, ``layer`` (a
    block, ``out``, or missing for the run's own epoch series), ``series`` (its name in the log),
    ``split`` (``train``/``test`` for a series named so, else missing), ``quantity`` (the name without the
    split: ``error`` for ``train_error`` and ``test_error``), ``value`` and ``units``. With ``dropna``
    (the default) entries the log leaves NaN (a series a rule does not have, the probe's angle between
    probe epochs) are left out. Ready for ``groupby`` or seaborn (``relplot(df, x="epoch", y="value",
    hue="variant", style="split", col="quantity")``). Needs ``bioplaus[analysis]``.
    """
    pd = _optional("pandas")
    columns: dict[str, list] = {k: [] for k in ("run", "variant", "model", "dataset", "seed", "epoch", "layer",
                                                "series", "split", "quantity", "value", "units")}

    def add(r: Run, layer: str | None, name: str, values: np.ndarray, units: str) -> None:
        values = np.asarray(values, dtype=float)
        keep = np.isfinite(values) if dropna else np.ones(len(values), bool)
        split, quantity = _split(name)
        n = int(keep.sum())
        for key, value in (("run", r.path), ("variant", r.config.variant), ("model", r.config.model),
                           ("dataset", r.config.dataset), ("seed", r.config.seed), ("layer", layer),
                           ("series", name), ("split", split), ("quantity", quantity), ("units", units)):
            columns[key].extend([value] * n)
        columns["epoch"].extend(epochs_of(r).astype(int)[keep].tolist())
        columns["value"].extend(values[keep].tolist())

    for r in _runs(runs):
        for name, values in r.epochs.items():
            if name != "epoch":
                add(r, None, name, values, series_info(r, f"epochs/{name}")[0])
        for b in _layers_of(r):
            for name, values in r.layers[b].items():
                add(r, b, name, values, series_info(r, f"layers/{b}/{name}")[0])
    return pd.DataFrame(columns)


# ---------------------------------------------------------------------- one row per run (the sweep's CSV)
RUNS_CSV_KEY = ("run", "recipe", "dataset", "model", "variant", "seed")  # the first columns, always these
_NOT_OVERRIDE = ("dataset", "model", "variant", "seed", "epochs", "device", "data_dir")  # own columns, or no setting


def _base_config(run: Run, recipe: str | None):
    """What the run's settings are compared with: its paper recipe's, else the defaults for its rule and model."""
    from bioplaus.config import Config, ConfigError
    from bioplaus.recipes import get_recipe

    c = run.config
    try:
        values = get_recipe(recipe) if recipe else {"variant": c.variant, "model": c.model}
        return Config.from_dict({**values, "dataset": c.dataset}).resolve()
    except (ConfigError, ValueError):
        return Config(variant=c.variant, model=c.model, dataset=c.dataset)


def _same_setting(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b)
    return a == b


def _cell(value: Any) -> Any:
    """One value per CSV cell: a schedule as its epochs joined by spaces, None as an empty cell."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return "" if value is None else value


def runs_table(runs: RunLike | Sequence[RunLike], last_k: int = 5) -> list[dict[str, Any]]:
    """One row per run log, one value per cell (the sweep report's ``results.csv``, :func:`runs_csv`).

    Columns, in order: ``run`` (the log's name without ``.h5``), ``recipe`` (the paper's recipe the run is
    compared with, see :func:`paper_comparison`, or empty), ``dataset``, ``model``, ``variant``, ``seed``;
    then one column per setting that some run overrides (that differs from its recipe, or from the
    defaults where no recipe fits: ``lr``, ``num_hidden``, ...), each holding every run's own value (a
    schedule as ``"100 150 175 188"``); then ``status``, ``epochs`` (completed), ``epochs_planned``,
    ``seconds`` (summed training time of the epochs in the log), ``test_error`` (the last epoch's, %),
    ``test_error_last<k>`` (the mean of the last ``last_k`` epochs'), ``best_test_error``, ``train_error``
    (last), ``paper_test_error``, ``device`` and ``path``. Missing numbers are NaN.
    """
    from bioplaus.config import Config

    if last_k < 1:
        raise ValueError(f"last_k must be at least 1, not {last_k}")
    rs = _collect(runs)
    comps = [paper_comparison(r)[0] for r in rs]
    overrides: dict[str, None] = {}
    for r, comp in zip(rs, comps):
        base = _base_config(r, comp["recipe"])
        for key in Config.field_names():
            if key not in _NOT_OVERRIDE and not _same_setting(getattr(r.config, key), getattr(base, key)):
                overrides[key] = None
    ordered = [k for k in Config.field_names() if k in overrides]
    rows = []
    for r, comp in zip(rs, comps):
        te = np.asarray(r.epochs.get("test_error", []), dtype=float)
        tr = np.asarray(r.epochs.get("train_error", []), dtype=float)
        row: dict[str, Any] = {
            "run": os.path.basename(r.path).removesuffix(".h5"), "recipe": comp["recipe"] or "",
            "dataset": r.config.dataset, "model": r.config.model, "variant": r.config.variant, "seed": r.config.seed,
        }
        row.update({k: _cell(getattr(r.config, k)) for k in ordered})
        row.update({
            "status": r.status, "epochs": r.num_epochs, "epochs_planned": r.attrs.get("epochs_planned", r.config.epochs),
            "seconds": float(np.nansum(np.asarray(r.epochs.get("seconds", []), dtype=float))),
            "test_error": float(te[-1]) if len(te) else math.nan,
            f"test_error_last{last_k}": float(np.mean(te[-last_k:])) if len(te) else math.nan,
            "best_test_error": float(np.nanmin(te)) if np.isfinite(te).any() else math.nan,
            "train_error": float(tr[-1]) if len(tr) else math.nan,
            "paper_test_error": math.nan if comp["paper_test_error"] is None else comp["paper_test_error"],
            "device": str(r.attrs.get("device", "")), "path": r.path,
        })
        rows.append(row)
    return rows


def runs_csv(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`runs_table` rows as CSV that ``pandas.read_csv`` reads with no options: a header of the columns,
    numbers written exactly (``repr``), a missing number as an empty cell, booleans as True/False."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = list(rows[0]) if rows else list(RUNS_CSV_KEY)
    w.writerow(header)
    for row in rows:
        w.writerow(["" if isinstance(row[c], float) and math.isnan(row[c]) else row[c] for c in header])
    return buf.getvalue()


# ---------------------------------------------------------------------- results tables (sweeps)
# Fields that do not make runs different settings: a group of runs is one setting over seeds.
_NOT_SETTING = ("seed", "device", "data_dir")


def _collect(runs: RunLike | Sequence[RunLike]) -> list[Run]:
    """Runs from Run objects, log paths, folders (every ``*.h5`` in it) or globs."""
    items = [runs] if isinstance(runs, (Run, str, os.PathLike)) else list(runs)
    out: list[Run] = []
    for item in items:
        if isinstance(item, Run):
            out.append(item)
        else:
            out.extend(read_run(p) for p in _expand(item))
    return out


def _setting_key(run: Run) -> str:
    d = run.config.to_dict()
    return json.dumps({k: v for k, v in d.items() if k not in _NOT_SETTING}, sort_keys=True)


def results_table(runs: RunLike | Sequence[RunLike]) -> list[dict[str, Any]]:
    """One row per setting (a recipe, or a recipe with other flags), over the seeds: the sweep's results table.

    ``runs``: logs as paths, folders, globs or :class:`Run` objects. Runs whose configurations are equal
    except ``seed``, ``device`` and ``data_dir`` form one row. Only completed runs enter the statistics of
    the final test error (the last epoch's); the others are counted in ``notes``. Each row:

    - ``label``: the recipe name (``<dataset>-<model>-<variant>`` where no recipe fits), plus the fields
      that differ between rows of the same recipe (``fashion-mnist-mlp-pred (lr=0.001)``);
    - ``recipe`` (or None), ``dataset`` (the run's), ``paper_dataset`` and ``model`` (the paper's dataset
      and network the row is compared with, see :func:`paper_comparison`), ``variant``;
    - ``seeds`` (completed runs, one per seed: a setting and seed logged twice under two names counts
      once), ``runs`` (all logs), ``seed_list``, ``test_errors`` (%, by seed);
    - ``test_error_mean``, ``test_error_std`` (sample standard deviation, NaN for one seed),
      ``test_error_min``; NaN without a completed run;
    - ``paper_test_error`` (% or None) and ``difference`` (mean − paper, percentage points, or NaN);
    - ``epochs`` (planned), ``seconds_per_run`` (mean over completed runs of the summed epoch times in the
      log: training time, without start-up and evaluation), ``device``;
    - ``matches_recipe`` and ``differences`` (every way the setting differs from the paper's recipe, as in
      :func:`paper_comparison`), ``notes`` (runs not completed), ``paths``.

    Rows come in the order of the paper's recipes (``bioplaus.recipes.list_recipes``), then by label.
    """
    from bioplaus.recipes import list_recipes

    groups: dict[str, list[Run]] = {}
    for r in _collect(runs):
        groups.setdefault(_setting_key(r), []).append(r)
    rows = []
    for members in groups.values():
        members = sorted(members, key=lambda r: (r.config.seed, r.path))
        first = members[0]
        comp = paper_comparison(first)[0]
        paper_dataset, _, _ = _paper_setting(first)
        unfinished = f"run {first.status} after {first.num_epochs} epochs"
        differences = [d for d in comp["differences"] if d != unfinished]
        done, notes = [], []
        for r in members:
            if r.status == "completed" and r.num_epochs:
                twin = next((d for d in done if d.config.seed == r.config.seed), None)
                if twin is None:
                    done.append(r)
                else:  # the same setting and seed twice (under two names): one result, counted once
                    notes.append(f"{os.path.basename(r.path)} repeats seed {r.config.seed} "
                                 f"({os.path.basename(twin.path)}); counted once")
        errors = [float(np.asarray(r.epochs["test_error"], dtype=float)[-1]) for r in done]
        for r in members:
            if r.status != "completed" or not r.num_epochs:
                notes.append(f"seed {r.config.seed} {r.status} after {r.num_epochs} of {r.config.epochs} epochs"
                             + (f" ({r.attrs.get('message')})" if r.status == "diverged" and r.attrs.get("message")
                                else ""))
        mean = float(np.mean(errors)) if errors else math.nan
        paper = comp["paper_test_error"]
        seconds = [float(np.nansum(np.asarray(r.epochs.get("seconds", []), dtype=float))) for r in done]
        devices = sorted({str(r.attrs.get("device", "")) for r in members})
        rows.append({
            "label": comp["recipe"] or _recipe_name(paper_dataset, first, comp["model"]),
            "recipe": comp["recipe"], "dataset": first.config.dataset, "paper_dataset": paper_dataset,
            "model": comp["model"], "variant": first.config.variant,
            "seeds": len(done), "runs": len(members), "seed_list": [r.config.seed for r in done],
            "test_errors": errors, "test_error_mean": mean,
            "test_error_std": float(np.std(errors, ddof=1)) if len(errors) > 1 else math.nan,
            "test_error_min": float(np.min(errors)) if errors else math.nan,
            "paper_test_error": paper, "difference": mean - paper if paper is not None and errors else math.nan,
            "epochs": first.config.epochs,
            "seconds_per_run": float(np.mean(seconds)) if seconds else math.nan,
            "device": ", ".join(devices), "matches_recipe": not differences, "differences": differences,
            "notes": notes, "paths": [r.path for r in members], "_config": json.loads(_setting_key(first)),
        })
    # Rows of the same recipe: name the fields in which they differ from each other.
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    for same in by_label.values():
        if len(same) < 2:
            continue
        keys = [k for k in same[0]["_config"] if len({json.dumps(r["_config"].get(k)) for r in same}) > 1]
        for row in same:
            row["label"] += " (" + ", ".join(f"{k}={_fmt_value(row['_config'][k])}" for k in keys) + ")"
    order = {name: i for i, name in enumerate(list_recipes())}
    for row in rows:
        del row["_config"]
    return sorted(rows, key=lambda row: (order.get(row["recipe"], len(order)), row["label"]))


def _fmt_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + " ".join(map(str, v)) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _pct(v: Any, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _mean_std(row: dict[str, Any]) -> str:
    if not row["seeds"]:
        return "-"
    return f"{_pct(row['test_error_mean'])} ± {_pct(row['test_error_std'])}"


def duration_text(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 07 min`` (``-`` for NaN)."""
    if math.isnan(seconds):
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`results_table` rows, one per setting; ``*`` marks a setting that differs
    from the paper's recipe (the last column says how)."""
    lines = [("| run | seeds | test error (%) mean ± std | min | paper (%) | Δ (pp) | epochs | time/run | "
             "differs from the paper's recipe |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        mark = "" if row["matches_recipe"] else " *"
        notes = "; ".join(row["differences"]) or "same as the paper"
        if row["notes"]:
            notes += "; not in the statistics: " + "; ".join(row["notes"])
        lines.append(f"| {row['label']}{mark} | {row['seeds']} | {_mean_std(row)} | {_pct(row['test_error_min'])} | "
                     f"{_pct(row['paper_test_error'])} | {_pct(row['difference'], signed=True)} | {row['epochs']} | "
                     f"{duration_text(row['seconds_per_run'])} | {notes} |")
    lines += ["", ("Test error: the last epoch's, over the completed seeds (sample standard deviation; '-' for one "
              "seed). Δ: measured mean − paper. time/run: the summed epoch training times in the log "
              "(start-up and evaluation not counted). * the run's setting differs from the paper's recipe.")]
    return "\n".join(lines)


def results_paper_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`results_table` rows laid out like the paper's tables: per dataset, networks × variants, each
    cell ``mean ± std (paper)``; ``*`` marks a setting that differs from the paper's recipe."""
    t = paper_tables()
    out = []
    datasets = list(dict.fromkeys(row["paper_dataset"] for row in rows))
    paper_columns = [*t["columns"], *t["backprop_free"]["columns"], *t["glob_plus_sim"]["columns"]]
    for dataset in datasets:
        mine = [row for row in rows if row["paper_dataset"] == dataset]
        variants = list(dict.fromkeys([*(v for v in paper_columns if any(row["variant"] == v for row in mine)),
                                       *(row["variant"] for row in mine)]))  # the paper's order, then the others
        paper_order = [r["model"] for r in t["tables"].get(dataset, {}).get("rows", [])]
        models = sorted(dict.fromkeys(row["model"] for row in mine),
                        key=lambda m: (paper_order.index(m) if m in paper_order else len(paper_order), m))
        out += [f"### {dataset}", "", "| network | " + " | ".join(variants) + " |",
                "|---|" + "---|" * len(variants)]
        for model in models:
            cells = []
            for v in variants:
                here = [row for row in mine if row["model"] == model and row["variant"] == v]
                cells.append("<br>".join(
                    f"{_mean_std(row)} ({_pct(row['paper_test_error'])})" + ("" if row["matches_recipe"] else " *")
                    + (f" {row['label'].split(' (', 1)[1][:-1]}" if " (" in row["label"] else "")
                    for row in here))
            out.append(f"| {model} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("Each cell: measured test error (%) mean ± std over the completed seeds (the paper's number). "
               "* the setting differs from the paper's recipe (see the recipes layout for how).")
    return "\n".join(out)


def plot_results(rows: Sequence[dict[str, Any]], ax=None):
    """Measured vs the paper: one line per :func:`results_table` row, the final test error of each seed (small
    dots), their mean ± std (error bar, in the rule's colour) and the paper's number (black cross). Returns
    the Figure."""
    from matplotlib.lines import Line2D

    fig, (axis,) = _axes(ax, 1, (8.5, 1.6 + 0.38 * max(1, len(rows))))
    y = np.arange(len(rows))[::-1]
    for yi, row in zip(y, rows):
        errs = row["test_errors"]
        if errs:
            axis.plot(errs, [yi] * len(errs), "o", ms=3, color="0.6", zorder=2)
            std = row["test_error_std"] if not math.isnan(row["test_error_std"]) else 0.0
            axis.errorbar([row["test_error_mean"]], [yi], xerr=[std], fmt="o", color=rule_color(row["variant"]),
                          capsize=3, zorder=3)
        if row["paper_test_error"] is not None:
            axis.plot([row["paper_test_error"]], [yi], "x", color="black", ms=8, mew=2, zorder=4)
    axis.set_yticks(y)
    axis.set_yticklabels([row["label"] + ("" if row["matches_recipe"] else " *") for row in rows], fontsize="small")
    axis.set_xlabel("test error (%)")
    datasets = ", ".join(dict.fromkeys(row["dataset"] for row in rows))
    axis.set_title(f"{datasets}: measured (mean ± std over seeds, in the rule's colour; seeds grey) vs the paper "
                   "(x); * differs from the recipe", fontsize="small")
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    axis.legend(handles=[*(Line2D([], [], marker="o", color=rule_color(v), ls="", label=v) for v in variants),
                         Line2D([], [], marker="o", color="0.6", ms=3, ls="", label="one seed"),
                         Line2D([], [], marker="x", color="black", mew=2, ls="", label="paper")],
                fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.grid(alpha=0.3, axis="x")
    axis.set_ylim(-0.7, len(rows) - 0.3)
    fig.tight_layout()
    return fig
