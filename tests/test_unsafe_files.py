"""Files opened in place are never followed through a link, never block on a FIFO, and must be regular
files (issue 24, class 1); the sweep's report marks its CSV so that a user's table is never replaced.

The tables come from the code: every file a sweep keeps for each of its runs (``RunSpec.files``) and in
its out-dir (``RECORD``, ``SWEEP_LOCK``), and every place the package opens a file in place. Each case
asserts the contract: exit status 2, exactly one ``error:`` line, no traceback, nothing created, changed
or removed (every folder's modification time included, see ``test_cli.listing``), the file a link points
to untouched, and no hang (a FIFO opened for reading or writing would block: each call runs under an
alarm that fails the test instead).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
from pathlib import Path

import pytest
from test_analysis import make_log
from test_cli import listing

from bioplaus import files
from bioplaus import sweep as sweep_mod
from bioplaus.log import RunLog
from bioplaus.sweep.cli import RECORD, SWEEP_LOCK

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "sims" / "run.py")
RECIPE = "fashion-mnist-mlp-pred"
TINY = ("--set", "num_layers=1", "--set", "num_hidden=16", "--set", "dataset=fashion-mnist-mini", "--set",
        "device=cpu")
OUTSIDE = b"a file outside the out-dir that a link points to"


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail (instead of hanging for ever) when the body blocks longer than ``seconds``: the alarm's handler
    raises, which also ends a blocking open() of a FIFO."""
    def expired(signum, frame):
        raise AssertionError(f"hung for {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def sweep_argv(out_dir, *extra) -> list[str]:
    return ["--recipes", RECIPE, "--seeds", "1", "--out-dir", str(out_dir), "--epochs", "1", *TINY,
            "--threads-per-job", "1", *extra]


def sweep_files(out_dir) -> dict[str, str]:
    """Every file the sweep of ``sweep_argv`` keeps: its run's (the code's own list) and its out-dir's."""
    (spec,) = sweep_mod.build_runs([RECIPE], [1], 1, sweep_mod.parse_sets(TINY[1::2]), str(out_dir))
    return {**{f"run: {what}": path for what, path in spec.files().items()},
            "the sweep's record": os.path.join(out_dir, RECORD), "the sweep's lock": os.path.join(out_dir, SWEEP_LOCK)}


def place(kind: str, path: str, outside: Path) -> None:
    if kind == "symlink":
        os.symlink(outside, path)
    else:
        os.mkfifo(path)


def assert_one_error(err: str, *words: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


CASES = [(what, kind, log, dry) for what in sweep_files("/x") for kind in ("symlink", "fifo")
         for log in (False, True) for dry in (False, True)
         if not (log and what == "run: a bioplaus run log")]


@pytest.mark.parametrize("what,kind,with_log,dry_run", CASES,
                         ids=[f"{w}-{k}-{'log' if lg else 'nolog'}-{'dry' if d else 'run'}" for w, k, lg, d in CASES])
def test_a_link_or_fifo_among_a_sweeps_files_is_refused(tmp_path, capsys, what, kind, with_log, dry_run):
    """The issue's cases among them: a link at sweeps.jsonl or <run>.out (records and console output written
    through it, outside the out-dir), a FIFO at <run>.h5.lock beside an existing log (the sweep hung, even
    with --dry-run)."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(OUTSIDE)
    path = sweep_files(out_dir)[what]
    if with_log:  # a log of this very run, 0 epochs, as a killed run leaves it: the plan would resume it
        (spec,) = sweep_mod.build_runs([RECIPE], [1], 1, sweep_mod.parse_sets(TINY[1::2]), str(out_dir))
        RunLog.create(spec.path, spec.config, "cpu", 1)
    place(kind, path, outside)
    before = listing(tmp_path)
    with no_hang():
        rc = sweep_mod.main(sweep_argv(out_dir, *(["--dry-run"] if dry_run else [])), run_script=RUN)
    captured = capsys.readouterr()
    assert rc == sweep_mod.EXIT_USAGE, captured
    assert_one_error(captured.err, path, "symbolic link" if kind == "symlink" else "FIFO")
    assert listing(tmp_path) == before
    assert outside.read_bytes() == OUTSIDE


# Every place the package opens a file in place, with what it must do when a link or a FIFO is there.
OPENERS = {
    "a run's lock (RunLock)": lambda p: files.RunLock(p[: -len(files.LOCK_SUFFIX)]).acquire(),
    "a lock (FileLock)": lambda p: files.FileLock(p).take(),
    "an appended record or console output": lambda p: files.append_regular(p, "a record").close(),
    "a file read back": lambda p: files.read_regular(p, "a record", 100),
    "a lock looked at": lambda p: files.lock_held(p),
    "a lock checked": lambda p: files.check_lock_file(p[: -len(files.LOCK_SUFFIX)]),
    "a log being edited": lambda p: RunLog(p).set_status("interrupted"),
}


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
@pytest.mark.parametrize("opener", sorted(OPENERS))
def test_every_opener_refuses_links_and_fifos(tmp_path, opener, kind):
    path = str(tmp_path / "target.h5.lock")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(OUTSIDE)
    place(kind, path, outside)
    before = listing(tmp_path)
    with no_hang(), pytest.raises(files.PathError) as err:
        OPENERS[opener](path)
    assert path in str(err.value) and ("symbolic link" if kind == "symlink" else "FIFO") in str(err.value)
    assert listing(tmp_path) == before and outside.read_bytes() == OUTSIDE
    # and the status written in place on a full disk does not go through either
    with no_hang():
        assert RunLog(path).set_status_in_place("interrupted") is False
    assert outside.read_bytes() == OUTSIDE


# ---------------------------------------------------------------------- the report's CSV
@pytest.fixture
def report_folder(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    make_log(folder / "a.h5", "glob", seed=1)
    make_log(folder / "b.h5", "predsim", seed=2)
    assert sweep_mod.main(["--report", str(folder)], out=io.StringIO()) == 0
    return folder


def test_the_report_csv_carries_a_mark_and_loads_as_a_plain_table(report_folder):
    """One row per run, as the report's table has them, and the mark in a last column: pandas reads it with
    no options, every column the table's, the mark's the same in every row."""
    from bioplaus import analysis

    path = report_folder / "results.csv"
    data = path.read_bytes()
    assert files.has_csv_mark(data)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    table = analysis.runs_table(analysis.load_runs(str(report_folder)))
    assert [r["run"] for r in rows] == [r["run"] for r in table] == ["a", "b"]
    assert list(rows[0])[-1] == files.CSV_MARK_COLUMN and len({r[files.CSV_MARK_COLUMN] for r in rows}) == 1
    assert rows[0][files.CSV_MARK_COLUMN].startswith("bioplaus ")
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(path)  # no options
    assert list(frame.columns) == [*table[0], files.CSV_MARK_COLUMN]
    assert list(frame["run"]) == ["a", "b"] and list(frame["variant"]) == ["glob", "predsim"]


def _user_tables(ours: bytes) -> dict[str, bytes]:
    """Tables a user may keep as results.csv that must never be replaced: made from ours, or by hand."""
    text = ours.decode()
    lines = text.splitlines(keepends=True)
    unmarked = "".join(ln.rsplit(",", 1)[0] + "\n" for ln in lines)  # ours without the mark column
    edited = text.replace(lines[1].split(",")[0], lines[1].split(",")[0] + " (mine)", 1)
    return {
        "the report's header line, then the user's rows": (lines[0].rsplit(",", 1)[0] + "\nmy,own,row\n").encode(),
        "the report's table without its mark": unmarked.encode(),
        "the report's table, one cell edited": edited.encode(),
        "the mark column with a digest of other rows": (lines[0] + lines[1].replace(lines[1].split(",")[0], "x", 1)
                                                        ).encode(),
        "the mark column's header only": lines[0].encode(),
        "not text": bytes(range(256)),
    }


@pytest.mark.parametrize("case", sorted(_user_tables(b"h,written_by\nr,c\n")))
def test_a_users_csv_is_never_replaced(report_folder, tmp_path, capsys, case):
    path = report_folder / "results.csv"
    ours = path.read_bytes()
    path.write_bytes(_user_tables(ours)[case])
    assert not files.has_csv_mark(path.read_bytes())
    before = listing(tmp_path)
    assert sweep_mod.main(["--report", str(report_folder)], out=io.StringIO()) == sweep_mod.EXIT_USAGE
    assert_one_error(capsys.readouterr().err, "results.csv was not written by bioplaus")
    assert listing(tmp_path) == before
    path.write_bytes(ours)  # its own table: replaced by the next report
    assert sweep_mod.main(["--report", str(report_folder)], out=io.StringIO()) == 0
    assert files.has_csv_mark(path.read_bytes())


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_the_reports_record_is_read_only_as_a_regular_file(report_folder, tmp_path, capsys, kind):
    """A link or a FIFO at DIR/sweeps.jsonl: not read (a FIFO would block the report), said, and the report
    written all the same (the record only adds the sweeps' commands)."""
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b'{"command": "secret", "host": "h"}\n')
    place(kind, str(report_folder / RECORD), outside)
    with no_hang():
        assert sweep_mod.main(["--report", str(report_folder)], out=io.StringIO()) == 0
    err = capsys.readouterr().err
    assert "not read: sweeps.jsonl" in err and "Traceback" not in err
    assert "secret" not in (report_folder / "results.md").read_text()
