"""Analysis of run logs: tables and matplotlib figures. Reads only HDF5 run logs (:mod:`bioplaus.log`).

What the figures show (Nøkland & Eidnes 2019, §4-5):

- **optimization vs generalization** (:func:`plot_errors`): train error (solid) and test error
  (dashed) per epoch, one colour per run. Local losses are weaker optimizers than backprop (higher
  train error) but can generalize as well or better (the gap between the two curves is smaller).
- **layer dynamics** (:func:`plot_layer_dynamics`, :func:`plot_depth`): each block's local losses
  ``L_pred`` (cross-entropy of its decoder), ``L_sim = mean((S(h') − S(Y))²)`` and the error of its
  local predictor, over epochs and over depth at one epoch. In local learning deeper blocks should
  reach lower local error: each block builds on the features of the one below.
- **alignment** (:func:`plot_angles`): for feedback-alignment heads the angle between the decoder's
  weights ``W`` and the fixed feedback matrix ``B`` that carries the error instead of ``Wᵀ``
  (``angle = arccos(<W, B> / (|W| |B|))``; it falls below 90° as ``W`` aligns with ``B``), and for any
  rule the angle between a block's actual update and the true backprop gradient on the probe batch.
- **similarity** (:func:`plot_similarity`): ``S(h)`` of each block on the fixed probe batch sorted by
  class, next to ``S(Y)``; the sim loss pulls ``S(h)`` towards the block structure of ``S(Y)``.
- **paper comparison** (:func:`paper_comparison`, :func:`comparison_markdown`): the measured test
  error of each run beside the paper's number for the same dataset / model / variant
  (``bioplaus/paper_tables.json``, the project's copy of the paper's tables), with every way the
  run's configuration differs from the paper's recipe (``bioplaus/recipes.json``).

Plot functions return the matplotlib ``Figure``; they never call ``plt.show``. They accept an
optional ``ax``/``axes`` to draw into. :func:`make_small_runs` creates small logs for notebooks
and labs by calling the command line in-process.
"""

from __future__ import annotations

import glob as _glob
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from bioplaus.log import LAYER_SERIES, Run, read_run

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
    if series not in LAYER_SERIES:
        raise ValueError(f"unknown layer series {series!r}; one of {', '.join(LAYER_SERIES)}")
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


def _colors(n: int) -> list:
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    return [cycle[i % len(cycle)] for i in range(n)]


def plot_errors(runs: RunLike | Sequence[RunLike], ax=None, labels: Sequence[str] | None = None):
    """Train (solid) and test (dashed) error vs epoch, one colour per run, legend by variant.

    Draws two lines per run, in run order: train then test; each line's label is
    ``"<label> train"`` / ``"<label> test"``. Returns the Figure.
    """
    rs = _runs(runs)
    labels = list(labels) if labels is not None else _labels(rs)
    fig, (axis,) = _axes(ax, 1, (6.4, 4.2))
    for r, lab, col in zip(rs, labels, _colors(len(rs))):
        x = epochs_of(r)
        axis.plot(x, r.epochs["train_error"], "-", color=col, label=f"{lab} train")
        axis.plot(x, r.epochs["test_error"], "--", color=col, label=f"{lab} test")
    axis.set_xlabel("epoch")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_ylabel("error (%)")
    axis.set_title("optimization (train, solid) vs generalization (test, dashed)")
    axis.legend(fontsize="small", ncol=2 if len(rs) > 3 else 1)
    axis.grid(alpha=0.3)
    return fig


_DYNAMICS = (("loss_pred", "local prediction loss (nats)"),
             ("loss_sim", "local similarity loss"),
             ("error_pred", "local predictor error (%)"))


def plot_layer_dynamics(run: RunLike, split: str = "test", axes=None):
    """Each block's local pred loss, sim loss and local predictor error vs epoch (three panels).

    One line per block (label = block name) in each panel where the run has that quantity; a
    panel the variant does not have says so. ``split`` is ``"train"`` or ``"test"``. Returns the Figure.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    r = _run(run)
    fig, axs = _axes(axes, 3, (13, 3.8))
    x = epochs_of(r)
    names = block_names(r)
    for axis, (key, ylabel) in zip(axs, _DYNAMICS):
        data = layer_series(r, f"{split}_{key}")
        for name, row, col in zip(names, data, _colors(len(names))):
            if np.isfinite(row).any():
                axis.plot(x, row, "-o", ms=3, color=col, label=name)
        if axis.lines:
            axis.legend(fontsize="small")
        else:
            axis.text(0.5, 0.5, f"no {key.replace('_', ' ')} in {r.config.variant}", ha="center",
                      va="center", transform=axis.transAxes)
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_ylabel(ylabel)
        axis.set_title(f"{split} {ylabel.split(' (')[0]}")
        axis.grid(alpha=0.3)
    fig.suptitle(f"{run_label(r)}: per-block local losses and errors")
    fig.tight_layout()
    return fig


def plot_depth(runs: RunLike | Sequence[RunLike], epoch: int | None = None, split: str = "test", axes=None,
               labels: Sequence[str] | None = None):
    """Local pred loss, sim loss and predictor error vs block depth at one epoch (1-based; None = last).

    One line per run (x = 1..n_blocks) in each panel where the run has that quantity.
    Returns the Figure.
    """
    rs = _runs(runs)
    labels = list(labels) if labels is not None else _labels(rs)
    fig, axs = _axes(axes, 3, (13, 3.8))
    for axis, (key, ylabel) in zip(axs, _DYNAMICS):
        for r, lab, col in zip(rs, labels, _colors(len(rs))):
            e = r.num_epochs if epoch is None else int(epoch)
            if not 1 <= e <= r.num_epochs:
                raise ValueError(f"{r.path} has epochs 1..{r.num_epochs}, not {e}")
            col_values = layer_series(r, f"{split}_{key}")[:, e - 1]
            if np.isfinite(col_values).any():
                axis.plot(np.arange(1, len(col_values) + 1), col_values, "-o", color=col, label=lab)
        if axis.lines:
            axis.legend(fontsize="small")
        axis.set_xlabel("block (depth)")
        axis.set_ylabel(ylabel)
        when = "last epoch" if epoch is None else f"epoch {epoch}"
        axis.set_title(f"{split} {ylabel.split(' (')[0]}, {when}")
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def plot_angles(runs: RunLike | Sequence[RunLike], axes=None, labels: Sequence[str] | None = None):
    """Left: the angle between each feedback matrix and the weights it stands in for, per epoch: a bpf
    decoder's B against its W (``fa_angle``), and a layer's B (feedback alignment, Kolen-Pollack) or
    sign(W) against W (``fb_angle``); right: the angle between each block's update and the true backprop
    gradient (probe epochs only). Any rule: a panel says so when its rule logs nothing there.

    One line per (run, layer, series) with data, labelled ``"<run> <layer>"`` (just the layer for one
    run; ``(decoder)`` marks a bpf decoder's angle). Returns the Figure.
    """
    rs = _runs(runs)
    labels = list(labels) if labels is not None else _labels(rs)
    fig, axs = _axes(axes, 2, (11, 3.8))
    panels = ((("fa_angle", "fb_angle"), "feedback matrix vs the weights it stands in for"),
              (("bp_angle",), "block update vs backprop gradient"))
    for axis, (series_names, title) in zip(axs, panels):
        lines = []
        for r, lab in zip(rs, labels):
            layers = block_names(r) + (["out"] if "out" in r.layers else [])
            for series in series_names:
                for b in layers:
                    row = np.asarray(r.layers.get(b, {}).get(series, []), dtype=float)
                    if row.size and np.isfinite(row).any():
                        name = b + (" (decoder)" if series == "fa_angle" else "")
                        lines.append((r, name if len(rs) == 1 else f"{lab} {name}", row))
        for (r, name, row), col in zip(lines, _colors(len(lines))):
            ok = np.isfinite(row)
            axis.plot(epochs_of(r)[ok], row[ok], "-o", ms=3, color=col, label=name)
        if len(axis.lines) > 4:
            axis.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif axis.lines:
            axis.legend(fontsize="small")
        else:
            axis.text(0.5, 0.5, "not logged (no feedback matrix in this rule)" if "fb_angle" in series_names
                      else "not logged (--probe-every 0)", ha="center", va="center", transform=axis.transAxes)
        axis.axhline(90, color="0.6", lw=0.8, ls=":")
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_ylabel("angle (degrees)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    fig.tight_layout()
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
    fig.suptitle(f"{run_label(r)}: S(h) on the probe batch (sorted by class) vs S(Y)")
    fig.colorbar(image, ax=[a for row in grid for a in row], shrink=0.8)
    return fig


# ---------------------------------------------------------------------- paper comparison
@lru_cache(maxsize=1)
def paper_tables() -> dict[str, Any]:
    """The paper's result tables (``bioplaus/paper_tables.json``): test errors in percent."""
    return json.loads(resources.files("bioplaus").joinpath("paper_tables.json").read_text(encoding="utf-8"))


def paper_model_key(model: str, feat_mult: float = 1.0, cutout: bool = False, num_layers: int = 3,
                    num_hidden: int = 1024) -> str:
    """The paper's name of a network: ``mlp-3x1024``, ``vgg8b``, ``vgg11b(3x)+cutout``."""
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
def figure_png(fig, dpi: float = 100) -> bytes:
    """``fig`` as PNG bytes (tight bounding box) carrying bioplaus's mark (see :mod:`bioplaus.files`);
    closes ``fig``."""
    import io

    import matplotlib
    import matplotlib.pyplot as plt

    from bioplaus import __version__
    from bioplaus.files import PNG_SOFTWARE

    buf = io.BytesIO()
    software = f"{PNG_SOFTWARE} {__version__} (matplotlib {matplotlib.__version__})"
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": software})
    finally:
        plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------- making small runs
class RunFailed(RuntimeError):
    """A small run that did not complete; ``result`` is its :class:`bioplaus.runner.RunResult` (its status
    and exit code: diverged, interrupted, storage)."""

    def __init__(self, variant: str, result) -> None:
        super().__init__(f"the {variant} run ended {result.status}: {result.message}")
        self.result = result


def make_small_runs(variants: Sequence[str], out_dir: str | os.PathLike = ".", epochs: int = 3,
                    num_layers: int = 1, num_hidden: int = 64, probe_every: int = 1, seed: int = 1,
                    extra: dict[str, Any] | None = None, progress: bool = False) -> list[str]:
    """Train one small run per variant with :func:`bioplaus.runner.run` and return the log paths.

    The logs go to a new folder ``small-runs-*`` under ``out_dir`` (nothing is ever overwritten).
    ``extra`` holds further configuration fields (``{"lr": 1e-3}``). Defaults: a 1x64 mlp on the
    embedded fashion-mnist-mini for 3 epochs, CPU, probe every epoch. Raises
    :class:`bioplaus.runner.BadInput` for a configuration that cannot run (before anything is made), and
    :class:`RunFailed` (a RuntimeError) when a run does not complete.
    """
    from bioplaus.runner import resolve, run

    configs = [resolve({"variant": variant, "epochs": epochs, "num_layers": num_layers, "num_hidden": num_hidden,
                        "probe_every": probe_every, "seed": seed, "device": "cpu", **(extra or {})})
               for variant in variants]  # every configuration is checked before anything is made
    os.makedirs(out_dir, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="small-runs-", dir=os.fspath(out_dir))
    paths = []
    for variant, cfg in zip(variants, configs):
        path = os.path.join(folder, f"{variant}.h5")
        result = run(cfg, out=path, progress=progress)
        if result.status != "completed":
            raise RunFailed(variant, result)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------- results tables (sweeps)
# Fields that do not make runs different settings: a group of runs is one setting over seeds.
_NOT_SETTING = ("seed", "device", "data_dir")
RESULTS_CSV_COLUMNS = (
    "label", "recipe", "dataset", "paper_dataset", "model", "variant", "seeds", "runs", "seed_list", "test_errors",
    "test_error_mean", "test_error_std", "test_error_min", "paper_test_error", "difference", "epochs",
    "seconds_per_run", "device", "matches_recipe", "differences", "notes", "paths",
)


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
    from bioplaus.config import VARIANTS

    t = paper_tables()
    out = []
    datasets = list(dict.fromkeys(row["paper_dataset"] for row in rows))
    for dataset in datasets:
        mine = [row for row in rows if row["paper_dataset"] == dataset]
        variants = [v for v in VARIANTS if any(row["variant"] == v for row in mine)]
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


def results_csv(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`results_table` rows as CSV (columns ``RESULTS_CSV_COLUMNS``). Numbers are written exactly
    (``repr``); a missing number (no paper value, one seed's std) is an empty field; lists are joined with
    spaces (``differences``, ``notes``: with ``; ``)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULTS_CSV_COLUMNS)
    for row in rows:
        values = []
        for col in RESULTS_CSV_COLUMNS:
            v = row[col]
            if isinstance(v, list):
                v = ("; " if col in ("differences", "notes") else " ").join(map(str, v))
            elif v is None or (isinstance(v, float) and math.isnan(v)):
                v = ""
            values.append(v)
        w.writerow(values)
    return buf.getvalue()


def plot_results(rows: Sequence[dict[str, Any]], ax=None):
    """Measured vs the paper: one line per :func:`results_table` row, the final test error of each seed (small
    dots), their mean ± std (error bar) and the paper's number (red cross). Returns the Figure."""
    fig, (axis,) = _axes(ax, 1, (8.5, 1.6 + 0.38 * max(1, len(rows))))
    y = np.arange(len(rows))[::-1]
    for yi, row in zip(y, rows):
        errs = row["test_errors"]
        if errs:
            axis.plot(errs, [yi] * len(errs), "o", ms=3, color="0.6", zorder=2)
            std = row["test_error_std"] if not math.isnan(row["test_error_std"]) else 0.0
            axis.errorbar([row["test_error_mean"]], [yi], xerr=[std], fmt="o", color="C0", capsize=3, zorder=3)
        if row["paper_test_error"] is not None:
            axis.plot([row["paper_test_error"]], [yi], "x", color="C3", ms=8, mew=2, zorder=4)
    axis.set_yticks(y)
    axis.set_yticklabels([row["label"] + ("" if row["matches_recipe"] else " *") for row in rows], fontsize="small")
    axis.set_xlabel("test error (%)")
    axis.set_title("measured (mean ± std over seeds, seeds in grey) vs paper (x); * differs from the recipe",
                   fontsize="small")
    from matplotlib.lines import Line2D

    axis.legend(handles=[Line2D([], [], marker="o", color="C0", ls="", label="measured mean ± std"),
                         Line2D([], [], marker="o", color="0.6", ms=3, ls="", label="one seed"),
                         Line2D([], [], marker="x", color="C3", mew=2, ls="", label="paper")],
                fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.grid(alpha=0.3, axis="x")
    axis.set_ylim(-0.7, len(rows) - 0.3)
    fig.tight_layout()
    return fig
