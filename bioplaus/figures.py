"""The figures command (``python sims/figures.py``): train one small run per variant, then draw the
README figures from their logs.

    python sims/figures.py                              # the README's setting (minutes on a CPU), into figures/
    python sims/figures.py --out-dir docs/figures       # redraw the README's own figures
    python sims/figures.py --epochs 20 --num-hidden 1024 --num-layers 3 --format png,pdf
    python sims/figures.py --logs runs/my-runs/         # draw from existing logs, train nothing

Writes ``errors``, ``layer_dynamics``, ``depth``, ``angles`` and ``similarity`` in each ``--format`` (png,
svg, pdf; default png, at ``--dpi`` 150) and ``paper_comparison.md`` to ``--out-dir`` (default ``figures``;
the tracked ``docs/figures`` only when named). The run logs go to a new folder ``runs/small-runs-*``
(never overwritten) and are kept; the figures read only them. The figures use the talk style of
:data:`bioplaus.analysis.TALK_STYLE`.

Every input is checked before anything is trained or written: bad input is one sentence and exit
status 2 with nothing made. A file at an output's path is replaced only when bioplaus wrote it (its
mark, see :mod:`bioplaus.files`); any other file there is refused. Exit statuses: 0 done, 1 a training
run diverged, 2 bad input, 74 a full disk or other storage failure, 130 interrupted (a training run's
status is passed on; no figure is written then, and its log is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Sequence

from bioplaus import analysis, files
from bioplaus.errors import sentence
from bioplaus.log import LogError
from bioplaus.rules import RULES
from bioplaus.runner import BadInput

DEFAULT_VARIANTS = ("glob", "pred", "sim", "predsim", "predsim-bpf")
FIGURES = ("errors", "layer_dynamics", "depth", "angles", "similarity")  # each written in every --format
TABLE = "paper_comparison.md"
DEFAULT_OUT_DIR = "figures"  # not docs/figures: the README's figures are redrawn only when named
EXIT_OK, EXIT_USAGE, EXIT_IO, EXIT_INTERRUPTED = 0, 2, 74, 130
DPI_RANGE = (10, 600)
DEFAULT_DPI = 150


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's errors -> one sentence, exit 2
        raise BadInput(message)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="variants to train and compare")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-hidden", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "gpu"))
    p.add_argument("--runs-dir", default="runs", help="folder under which a new small-runs-* folder is made")
    p.add_argument("--logs", nargs="+", help="draw from these logs (paths, globs, folders) instead of training")
    p.add_argument("--out-dir", default=DEFAULT_OUT_DIR,
                   help=f"where the figures go (default {DEFAULT_OUT_DIR}; --out-dir docs/figures redraws the README's)")
    p.add_argument("--format", default="png", help="figure formats, comma-separated: "
                   + ", ".join(analysis.FIGURE_FORMATS) + " (default png)")
    p.add_argument("--similarity-variant", default="predsim",
                   help="the run whose S(h) is drawn (the last run when no run has this variant)")
    p.add_argument("--layer-variant", default="predsim",
                   help="the run whose per-block dynamics are drawn (the last run when no run has this variant)")
    p.add_argument("--dpi", type=int, default=DEFAULT_DPI,
                   help=f"resolution of PNGs (and of images inside SVG and PDF), {DPI_RANGE[0]} to {DPI_RANGE[1]} "
                        f"(default {DEFAULT_DPI})")
    return p


def _pick(runs, variant: str):
    for r in runs:
        if r.config.variant == variant:
            return r
    return runs[-1]


def formats_of(text: str) -> tuple[str, ...]:
    """``"png,pdf"`` -> ``("png", "pdf")``; raises BadInput for a format bioplaus does not write."""
    formats = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",")))
    for fmt in formats:
        if fmt not in analysis.FIGURE_FORMATS:
            raise BadInput(f"--format: unknown format {fmt!r}; choose from {', '.join(analysis.FIGURE_FORMATS)}")
    return formats


def output_paths(out_dir: str, formats: Sequence[str] = ("png",)) -> list[tuple[str, tuple[bytes, ...]]]:
    """Every file this command may write into ``out_dir``, with the mark an earlier one of ours carries."""
    return ([(os.path.join(out_dir, f"{name}.{fmt}"), files.FIGURE_MARKS[fmt]) for name in FIGURES for fmt in formats]
            + [(os.path.join(out_dir, TABLE), files.TEXT_MARKS)])


def render(runs, out_dir: str, similarity_variant: str = "predsim", layer_variant: str = "predsim",
           dpi: int = DEFAULT_DPI, formats: Sequence[str] = ("png",)) -> list[files.Output]:
    """The README figures of ``runs`` (in each format) and the paper table, as outputs for ``out_dir``
    (nothing written). The angles figure is left out when no run logs an angle, the similarity grid when no
    run logs the probe's matrices."""
    import matplotlib

    outputs = []
    with matplotlib.rc_context(analysis.TALK_STYLE):
        def add(draw, name: str) -> None:
            for fmt in formats:  # a figure per format: savefig closes it
                outputs.append(files.Output.figure(os.path.join(out_dir, f"{name}.{fmt}"),
                                                   analysis.figure_bytes(draw(), fmt, dpi), fmt))

        add(lambda: analysis.plot_errors(runs), "errors")
        add(lambda: analysis.plot_layer_dynamics(_pick(runs, layer_variant)), "layer_dynamics")
        add(lambda: analysis.plot_depth(runs), "depth")
        if analysis.angle_quantities(runs):
            add(lambda: analysis.plot_angles(runs), "angles")
        with_probe = [r for r in runs if r.probe.get("similarity")]
        if with_probe:
            add(lambda: analysis.plot_similarity(_pick(with_probe, similarity_variant)), "similarity")
    table = analysis.comparison_markdown(analysis.paper_comparison(runs)) + "\n"
    outputs.append(files.Output.markdown(os.path.join(out_dir, TABLE), "python sims/figures.py", table))
    return outputs


def draw(runs, out_dir: str, similarity_variant: str = "predsim", layer_variant: str = "predsim",
         dpi: int = DEFAULT_DPI, formats: Sequence[str] = ("png",)) -> list[str]:
    """Draw the README figures of ``runs`` into ``out_dir``; returns the written paths. Raises
    :class:`bioplaus.files.PathError` (nothing written) when an output's path holds a file bioplaus did not write."""
    return files.write_outputs(render(runs, out_dir, similarity_variant, layer_variant, dpi, formats), "--out-dir")


def _check(args: argparse.Namespace) -> None:
    """Every check of the flags that needs no file system; raises BadInput."""
    for flag, value, low in (("--epochs", args.epochs, 1), ("--num-layers", args.num_layers, 1),
                             ("--num-hidden", args.num_hidden, 1), ("--seed", args.seed, 0)):
        if value < low:
            raise BadInput(f"{flag} must be at least {low}, not {value}")
    if not DPI_RANGE[0] <= args.dpi <= DPI_RANGE[1]:
        raise BadInput(f"--dpi must be between {DPI_RANGE[0]} and {DPI_RANGE[1]}, not {args.dpi}")
    known = tuple(RULES)
    for flag, value in (("--similarity-variant", args.similarity_variant), ("--layer-variant", args.layer_variant)):
        if value not in known:
            raise BadInput(f"{flag}: unknown variant {value!r}; choose one of {', '.join(known)}")
    if len(set(args.variants)) < len(args.variants):
        raise BadInput("--variants repeats a variant")


def _load(sources: Sequence[str]):
    """The logs to draw, each with at least one completed epoch (a run stopped before its first has
    nothing to draw)."""
    try:
        runs = analysis.load_runs(*sources)
    except ValueError as exc:  # nothing matched
        raise BadInput(str(exc)) from None
    for r in runs:
        if not r.num_epochs:
            raise BadInput(f"{r.path} holds no completed epoch (its run is {r.status or 'unknown'}), so there is "
                           "nothing to draw from it; leave it out of --logs")
    return runs


def _prepare(args: argparse.Namespace):
    """Every check, in order: the flags, the outputs' paths (reading only), the logs or the runs to train,
    then the folders tried for real (which changes their modification time: last). Returns the logs to
    draw, or None when they are to be trained."""
    _check(args)
    targets = output_paths(args.out_dir, formats_of(args.format))
    files.check_outputs(targets, "--out-dir", probe=False)
    runs_dir = os.path.join(args.runs_dir, "small-runs-*")
    if args.logs:
        runs = _load(args.logs)
    else:
        runs = None
        analysis.small_run_configs(args.variants, epochs=args.epochs, num_layers=args.num_layers,
                                   num_hidden=args.num_hidden, probe_every=1, seed=args.seed,
                                   extra={"device": args.device})
        files.check_folder_writable(runs_dir, "--runs-dir")
    files.check_outputs(targets, "--out-dir")
    if runs is None:
        files.probe_folder(runs_dir, "--runs-dir")
    return runs


def _train(args: argparse.Namespace) -> list[str]:
    """The small runs, trained in this process. A run that does not complete says how on stderr itself
    (its log, how to resume); that line is held back and said once, in this command's own sentence (the
    RunFailed below), so that the command ends with one line whatever stopped it."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            paths = analysis.make_small_runs(args.variants, out_dir=args.runs_dir, epochs=args.epochs,
                                             num_layers=args.num_layers, num_hidden=args.num_hidden,
                                             probe_every=1, seed=args.seed, extra={"device": args.device})
    except analysis.RunFailed:
        raise
    except BaseException:
        sys.stderr.write(said.getvalue())
        raise
    sys.stderr.write(said.getvalue())
    return paths


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The figures command; ``prog``: how the user started it (``bioplaus figures``, ``python sims/figures.py``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, whatever backend the environment names
    try:
        try:
            args = build_parser(prog).parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        runs = _prepare(args)
        if runs is None:  # make_small_runs checks every run's configuration again before it makes a folder
            paths = _train(args)
            runs = _load(paths)
        written = draw(runs, args.out_dir, args.similarity_variant, args.layer_variant, args.dpi,
                       formats_of(args.format))
    except (BadInput, files.PathError, LogError) as exc:
        print(f"error: {sentence(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except analysis.RunFailed as exc:  # a training run that diverged, was interrupted or met a full disk
        print(f"error: {sentence(str(exc))} No figure was written; the logs are kept.", file=sys.stderr)
        return exc.result.exit_code
    except KeyboardInterrupt:
        print("interrupted; each figure file is whole (the old one or the new one), and the logs of finished "
              "runs are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        if not files.is_storage_failure(exc):
            raise
        print(f"error: {sentence(f'cannot write the figures: {exc.strerror or exc}')}", file=sys.stderr)
        return EXIT_IO
    for path in written:
        print(f"wrote {path}")
    print("from the logs: " + " ".join(r.path for r in runs))
    return EXIT_OK
