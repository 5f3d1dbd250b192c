"""``python sims/sweep.py --report DIR``: the results table of a folder of run logs, as Markdown, CSV and a
figure (see :func:`bioplaus.analysis.results_table`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import sys

from bioplaus import files
from bioplaus.sweep.runs import EXIT_OK, SweepError

# the header of the per-setting results.csv that bioplaus wrote before it wrote one row per run
OLD_CSV_MARK = b"label,recipe,dataset,paper_dataset,model,variant,seeds,runs,seed_list,test_errors,"


# ---------------------------------------------------------------------- the report
def _sweep_records(path: str) -> list[dict]:
    """The sweeps recorded in ``DIR/sweeps.jsonl`` (one JSON object a line); a line that is not one (cut
    short by a full disk, edited by hand) is skipped: the record only adds the commands to the report."""
    records = []
    with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as fh:
        for line in fh:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
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
    sweeps = _sweep_records(os.path.join(folder, "sweeps.jsonl"))
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
    csv_text = analysis.runs_csv(analysis.runs_table(runs))
    outputs = [
        files.Output.markdown(os.path.join(folder, "results.md"), command, text),
        # a CSV has no room for a comment: its header's fixed first columns are the mark (or the header of the
        # per-setting CSV of earlier versions)
        files.Output(os.path.join(folder, "results.csv"), csv_text.encode(),
                     (",".join(analysis.RUNS_CSV_KEY).encode() + b",", OLD_CSV_MARK)),
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
