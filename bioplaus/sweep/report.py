"""``python sims/sweep.py --report DIR``: the results table of a folder of run logs, as Markdown, CSV and a
figure (see :func:`bioplaus.analysis.results_table`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shlex
import sys

from bioplaus import files, limits
from bioplaus.sweep.runs import EXIT_OK, SweepError

# The per-setting results.csv of bioplaus before it wrote one row per run, and before its CSV carried a mark
# (files.CSV_MARK_COLUMN): its whole header line. Such a file, every row as wide as that header, is still
# the report's own to replace; a table that merely starts like it (a user's, made from it) is not.
OLD_CSV_HEADER = [
    "label", "recipe", "dataset", "paper_dataset", "model", "variant", "seeds", "runs", "seed_list", "test_errors",
    "test_error_mean", "test_error_std", "test_error_min", "paper_test_error", "difference", "epochs",
    "seconds_per_run", "device", "matches_recipe", "differences", "notes", "paths",
]


def _old_report_csv(data: bytes) -> bool:
    """True for a results.csv as an earlier bioplaus wrote it (see OLD_CSV_HEADER)."""
    import csv
    import io

    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error):
        return False
    return len(rows) >= 2 and rows[0] == OLD_CSV_HEADER and all(len(row) == len(OLD_CSV_HEADER) for row in rows)


# ---------------------------------------------------------------------- the report
RECORD_LIMIT = 16 << 20  # DIR/sweeps.jsonl: a line of about 500 bytes per sweep; more is read no further


def _sweep_records(path: str, bad: list[str]) -> list[dict]:
    """The sweeps recorded in ``DIR/sweeps.jsonl`` (one JSON object a line); a line that is not one (cut
    short by a full disk, edited by hand, nested too deep) is skipped: the record only adds the commands
    to the report. A record that is not a regular file (a link, a FIFO) is not read, and said so in ``bad``."""
    try:
        data = files.read_regular(path, "the sweep's record", RECORD_LIMIT)
    except FileNotFoundError:
        return []
    except (OSError, files.PathError) as exc:
        bad.append(f"{os.path.basename(path)} ({exc})")
        return []
    records = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = limits.loads(line, "a line of the record")
            if isinstance(entry, dict) and all(isinstance(v, (str, int, float, bool, type(None)))
                                               for v in entry.values()):
                records.append(entry)
    return records


def report(folder: str, layout: str = "recipes", out=None, command: str = "python sims/sweep.py --report") -> int:
    """``--report DIR``: the results table of every log in DIR, printed and written to DIR/results.{md,csv,png}.
    ``command``: how the user asked for it (the table says so)."""
    import glob

    from bioplaus import analysis
    from bioplaus.log import LogError, read_run

    out = out or sys.stdout
    if not os.path.isdir(folder):
        raise SweepError(f"--report {folder} is not a folder")
    paths = sorted(glob.glob(os.path.join(folder, "*.h5")))
    runs, bad = [], []
    for p in paths:
        try:
            runs.append(read_run(p))
        except LogError as exc:
            bad.append(f"{os.path.basename(p)} ({exc})")
    if not runs:
        raise SweepError(f"no run logs in {folder}")
    rows = analysis.results_table(runs)
    sweeps = _sweep_records(os.path.join(folder, "sweeps.jsonl"), bad)
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    command = " ".join([command, *map(shlex.quote, [folder, *(["--layout", layout] if layout != "recipes" else [])])])
    head = [f"# Results: {folder}", "",
            (f"{len(runs)} run logs ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}); "
            f"report made {_dt.datetime.now().astimezone().isoformat(timespec='seconds')} by `{command}`. "
            f"Devices: {', '.join(sorted({str(r.attrs.get('device', '?')) for r in runs}))}.")]
    if sweeps:
        head += ["", "Sweeps that wrote into this folder:", ""]
        seen = set()
        for s in sweeps:
            key = (s.get("command"), s.get("host"))
            if key in seen:
                continue
            seen.add(key)
            how = f"{s.get('jobs')} MPI workers" if s.get("mpi") else f"{s.get('jobs')} at a time"
            if isinstance(s.get("ranks_per_run"), int) and s["ranks_per_run"] > 1:
                how += f", each run over {s['ranks_per_run']} MPI ranks (layer-parallel)"
            head.append(f"- `{s.get('command')}` on {s.get('host')} ({s.get('machine')}; {how}, "
                        f"{s.get('threads_per_job')} BLAS thread(s) each), first started {s.get('started')}")
    if bad:
        head += ["", "Not read: " + "; ".join(bad)]
    table = analysis.results_paper_markdown(rows) if layout == "paper" else analysis.results_markdown(rows)
    text = "\n".join(head) + "\n\n" + table + "\n"
    import matplotlib

    matplotlib.use("Agg")
    outputs = [
        files.Output.markdown(os.path.join(folder, "results.md"), command, text),
        # its mark: a last column holding a digest of the table (files.csv_marked)
        files.Output.csv(os.path.join(folder, "results.csv"), analysis.runs_csv(analysis.runs_table(runs)),
                         legacy=(_old_report_csv,)),
        files.Output.png(os.path.join(folder, "results.png"), analysis.figure_png(analysis.plot_results(rows))),
    ]
    try:
        written = files.write_outputs(outputs, "--report")
    except files.PathError as exc:
        raise SweepError(str(exc)) from None
    print(text, file=out)
    print(f"wrote {', '.join(written)}", file=out)
    for line in bad:
        print(f"warning: not read: {line}", file=sys.stderr)
    return EXIT_OK
