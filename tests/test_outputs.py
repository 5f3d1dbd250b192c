"""Derived outputs (figures and tables drawn from logs): ``bioplaus.files.write_outputs``, the figures
command ``sims/figures.py`` and the sweep's ``--report``.

Each output carries bioplaus's mark; an existing file at an output's path is replaced only when it carries
that mark. Anything else there (a user's own ``errors.png``, a symbolic link, a folder) is refused with one
sentence and exit 2, and nothing at all is written: every output is checked before the first is.
New files get the mode ``open()`` would give them (0o666 less the umask), replaced ones keep theirs.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pathlib
import stat

import matplotlib

matplotlib.use("Agg")

import pytest
from test_analysis import make_log
from test_cli import listing

from bioplaus import files
from bioplaus import sweep as sweep_mod

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIGURE_FILES = ["angles.png", "depth.png", "errors.png", "layer_dynamics.png", "paper_comparison.md",
                "similarity.png"]  # the default --format png


def _figures_module():
    spec = importlib.util.spec_from_file_location("figures_cmd", ROOT / "sims" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures():
    return _figures_module()


@pytest.fixture
def logs(tmp_path):
    (tmp_path / "logs").mkdir()
    a, _ = make_log(tmp_path / "logs" / "a.h5", "glob", seed=1)
    b, _ = make_log(tmp_path / "logs" / "b.h5", "predsim", seed=2)
    return [a, b]


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------------- write_outputs
def _out(path, data=b"new", marks=(b"MARK",)):
    return files.Output(str(path), data, tuple(marks))


def test_outputs_are_written_with_the_umask_mode_and_replace_only_marked_files(tmp_path):
    old = os.umask(0o027)
    try:
        written = files.write_outputs([_out(tmp_path / "sub" / "a.txt"), _out(tmp_path / "sub" / "b.txt")], "--out")
    finally:
        os.umask(old)
    assert written == [str(tmp_path / "sub" / "a.txt"), str(tmp_path / "sub" / "b.txt")]
    assert _mode(tmp_path / "sub" / "a.txt") == 0o640  # 0o666 less the umask, not mkstemp's 0600
    assert (tmp_path / "sub" / "a.txt").read_bytes() == b"new"
    # replacing a marked file keeps its mode
    p = tmp_path / "sub" / "a.txt"
    p.write_bytes(b"old MARK here")
    os.chmod(p, 0o604)
    files.write_outputs([_out(p, b"newer")], "--out")
    assert p.read_bytes() == b"newer" and _mode(p) == 0o604
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.txt", "b.txt"]  # no temporary file left


@pytest.mark.parametrize("kind", ["unmarked", "symlink", "folder", "fifo"])
def test_an_output_path_holding_something_else_is_refused_and_nothing_is_written(tmp_path, kind):
    target = tmp_path / "b.txt"
    if kind == "unmarked":
        target.write_bytes(b"the user's own file")
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(b"MARK")  # even a link to a marked file: never written through
        target.symlink_to(tmp_path / "elsewhere")
    elif kind == "folder":
        target.mkdir()
    else:
        os.mkfifo(target)
    before = listing(tmp_path)
    with pytest.raises(files.PathError) as err:
        files.write_outputs([_out(tmp_path / "a.txt"), _out(target), _out(tmp_path / "new" / "c.txt")], "--out")
    assert str(target) in str(err.value)
    assert listing(tmp_path) == before  # a.txt (checked first) was not written either, no folder made


def test_the_mark_is_looked_for_only_in_the_head_of_the_file(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(b"x" * 10_000 + files.PNG_MARK)
    with pytest.raises(files.PathError):
        files.write_outputs([_out(p, marks=(files.PNG_MARK,))], "--out")


# ---------------------------------------------------------------------- sims/figures.py
def test_figures_carry_the_mark_and_a_second_run_replaces_them(figures, logs, tmp_path, capsys):
    out = tmp_path / "figs"
    assert figures.main(["--logs", *logs, "--out-dir", str(out)]) == 0
    assert sorted(os.listdir(out)) == FIGURE_FILES
    for name in FIGURE_FILES:
        head = (out / name).read_bytes()[:4096]
        assert (files.PNG_MARK in head) if name.endswith(".png") else head.startswith(files.TEXT_MARK.encode())
    first = (out / "errors.png").read_bytes()
    (out / "errors.png").write_bytes(first[:200])  # still ours: the mark is in the head
    assert figures.main(["--logs", logs[0], "--out-dir", str(out)]) == 0
    assert (out / "errors.png").read_bytes() != first[:200]
    assert "| glob |" in (out / "paper_comparison.md").read_text()
    assert "| predsim |" not in (out / "paper_comparison.md").read_text()  # the table of this run only


def _refused(figures, argv, root, capsys, match):
    before = listing(root)
    rc = figures.main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert match in lines[0], lines[0]
    assert listing(root) == before, "a refused command wrote something"


FIGURE_BAD = [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--num-layers", "0"], "--num-layers must be at least 1"),
    (["--num-hidden", "-3"], "--num-hidden must be at least 1"),
    (["--seed", "-1"], "--seed must be at least 0"),
    (["--dpi", "-1"], "--dpi must be between"),
    (["--dpi", "100000"], "--dpi must be between"),
    (["--dpi", "many"], "invalid int value"),
    (["--format", "png,gif"], "--format: unknown format 'gif'"),
    (["--format", ""], "--format: unknown format ''"),
    (["--variants", "backprop"], "unknown variant 'backprop'"),
    (["--variants", "pred", "pred"], "repeats"),
    (["--layer-variant", "nope"], "--layer-variant: unknown variant"),
    (["--similarity-variant", "nope"], "--similarity-variant: unknown variant"),
    (["--device", "tpu"], "invalid choice"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--logs", "missing.h5"], "no run log at"),
    (["--logs", "notalog.h5"], "not a readable HDF5 file"),
    (["--logs", "emptydir"], "no run logs matched"),
    (["--out-dir", "afile"], "not a folder"),
    (["--out-dir", "mine"], "was not written by bioplaus"),
    (["--out-dir", "linked"], "symbolic link"),
    (["--runs-dir", "afile"], "not a folder"),
    # /proc passes os.access for root: only making a folder there finds out (before any run trains)
    *([(["--out-dir", "/proc/bioplaus-never"], "/proc does not accept new folders"),
       (["--runs-dir", "/proc/bioplaus-never"], "/proc does not accept new folders")]
      if os.path.isdir("/proc/self") else []),
]


@pytest.mark.parametrize("argv,match", FIGURE_BAD, ids=[" ".join(a) for a, _ in FIGURE_BAD])
def test_figures_bad_input(figures, argv, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notalog.h5").write_bytes(b"not hdf5")
    (tmp_path / "afile").write_bytes(b"a file")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "errors.png").write_bytes(b"\x89PNG my own figure")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "errors.png").symlink_to(tmp_path / "afile")
    _refused(figures, argv, tmp_path, capsys, match)


def test_figures_trains_nothing_when_an_output_is_refused(figures, tmp_path, monkeypatch, capsys):
    """The outputs are checked before the small runs train: no runs/ folder appears. The default folder is
    figures/, not the tracked docs/figures."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures").mkdir(parents=True)
    (tmp_path / "figures" / "paper_comparison.md").write_text("my notes\n")
    _refused(figures, ["--epochs", "1"], tmp_path, capsys, "was not written by bioplaus")
    assert not (tmp_path / "runs").exists()
    _refused(figures, ["--epochs", "1", "--format", "png,svg,pdf"], tmp_path, capsys, "was not written by bioplaus")
    (tmp_path / "figures" / "paper_comparison.md").unlink()
    (tmp_path / "figures" / "errors.pdf").write_bytes(b"%PDF-1.4 a user's own figure")
    _refused(figures, ["--epochs", "1", "--format", "png,pdf"], tmp_path, capsys, "errors.pdf was not written")
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The figures command on two small logs, in every format, with its defaults otherwise."""
    folder = tmp_path_factory.mktemp("drawn")
    (folder / "logs").mkdir()
    a, _ = make_log(folder / "logs" / "a.h5", "glob", seed=1)
    b, _ = make_log(folder / "logs" / "b.h5", "predsim-bpf", seed=2)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert _figures_module().main(["--logs", a, b, "--format", "png,svg,pdf"]) == 0
    finally:
        os.chdir(cwd)
    return folder


def test_figures_default_folder_dpi_and_size(drawn):
    from PIL import Image

    out = drawn / "figures"  # the default --out-dir
    stems = ["angles", "depth", "errors", "layer_dynamics", "similarity"]
    assert sorted(os.listdir(out)) == sorted([f"{s}.{f}" for s in stems for f in ("png", "svg", "pdf")]
                                             + ["paper_comparison.md"])
    for stem in stems:
        with Image.open(out / f"{stem}.png") as image:
            dpi = image.info["dpi"]
            width, height = image.size
        assert round(dpi[0]) == round(dpi[1]) == 150, (stem, dpi)  # 150 dpi by default, not 80
        assert width >= 1000 and height >= 600, (stem, width, height)  # a slide's width, not 450x327
    with Image.open(out / "errors.png") as image:
        assert image.size[0] >= 1100  # 7.5 in at 150 dpi, less the tight box's trim


def test_each_format_carries_the_mark_and_replaces_only_its_own(drawn, figures, tmp_path):
    out = drawn / "figures"
    for stem in ("errors", "similarity"):
        png, svg, pdf = ((out / f"{stem}.{f}").read_bytes() for f in ("png", "svg", "pdf"))
        assert files.PNG_MARK in png[:4096]
        assert svg.startswith(b"<?xml") and svg.split(b"\n")[1].startswith(files.TEXT_MARK.encode())
        assert pdf.startswith(b"%PDF") and files.PDF_MARK in pdf[-65536:] and files.PDF_MARK not in pdf[:8192]
    # each format's mark is what lets a later run replace the file; another file of that name is refused
    target = tmp_path / "figs"
    target.mkdir()
    for fmt in ("png", "svg", "pdf"):
        ours = (out / f"errors.{fmt}").read_bytes()
        (target / f"errors.{fmt}").write_bytes(ours)
        assert files.check_outputs([(str(target / f"errors.{fmt}"), files.FIGURE_MARKS[fmt])], "--out-dir") is None
        for other in {"png", "svg", "pdf"} - {fmt}:  # a mark of another format does not count
            (target / f"errors.{other}.x").write_bytes((out / f"errors.{other}").read_bytes())
            with pytest.raises(files.PathError):
                files.check_outputs([(str(target / f"errors.{other}.x"), files.FIGURE_MARKS[fmt])], "--out-dir")
            (target / f"errors.{other}.x").unlink()
    # the same logs give the same bytes: no date in any format
    logs = sorted(str(p) for p in (drawn / "logs").glob("*.h5"))
    assert figures.main(["--logs", *logs, "--format", "svg,pdf", "--out-dir", str(target)]) == 0
    for fmt in ("svg", "pdf"):
        assert (target / f"errors.{fmt}").read_bytes() == (out / f"errors.{fmt}").read_bytes()


# ---------------------------------------------------------------------- the sweep's report
def test_report_refuses_files_it_did_not_write_and_replaces_its_own(logs, tmp_path, capsys):
    folder = pathlib.Path(logs[0]).parent
    assert sweep_mod.main(["--report", str(folder)], out=io.StringIO()) == 0
    mine = {n: (folder / n).read_bytes() for n in ("results.md", "results.csv", "results.png")}
    assert mine["results.md"].startswith(files.TEXT_MARK.encode()) and files.PNG_MARK in mine["results.png"][:4096]
    assert sweep_mod.main(["--report", str(folder)], out=io.StringIO()) == 0  # its own files: replaced
    capsys.readouterr()
    for name, data in mine.items():
        (folder / name).write_bytes(b"a user's file")
        before = listing(tmp_path)
        assert sweep_mod.main(["--report", str(folder)], out=io.StringIO()) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "was not written by bioplaus" in err and len(err.splitlines()) == 1
        assert listing(tmp_path) == before
        (folder / name).write_bytes(data)


def test_a_runs_log_and_checkpoint_get_the_umask_mode(tmp_path, capsys):
    """Every write goes through a temporary file that mkstemp makes 0600; the finished file must still be
    readable by whoever the user's umask lets read it (a shared results folder, a lab's server)."""
    from bioplaus.cli import main

    log = tmp_path / "run.h5"
    old = os.umask(0o022)
    try:
        assert main(["--variant", "pred", "--num-layers", "1", "--num-hidden", "16", "--epochs", "1",
                     "--device", "cpu", "--no-progress", "--out", str(log)]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    assert _mode(log) == 0o644
    assert _mode(files.checkpoint_path(str(log))) == 0o644


@pytest.mark.parametrize("status,code", [("diverged", 1), ("interrupted", 130), ("storage", 74)])
def test_figures_passes_on_how_a_training_run_ended(figures, tmp_path, monkeypatch, capsys, status, code):
    from bioplaus import analysis
    from bioplaus.runner import RunResult

    def failing(variants, **kw):
        raise analysis.RunFailed(variants[0], RunResult(str(tmp_path / "x.h5"), status, 1, "why"))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(analysis, "make_small_runs", failing)
    assert figures.main(["--epochs", "1"]) == code
    err = capsys.readouterr().err
    assert err.startswith(f"error: the glob run ended {status}") and len(err.splitlines()) == 1
    assert not (tmp_path / "figures").exists() and not (tmp_path / "docs").exists()


def test_outputs_that_do_not_fit_are_refused_before_any_folder_or_file_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "free_bytes", lambda folder: 1000)  # 1 kB free, less than the margin
    before = listing(tmp_path)
    with pytest.raises(files.StorageFull):
        files.write_outputs([_out(tmp_path / "new" / "a.txt", b"x" * 10)], "--out")
    assert listing(tmp_path) == before


def test_report_replaces_the_per_setting_csv_of_earlier_versions(logs, capsys):
    """results.csv was one row per setting; the report's own file of then is still its own to replace."""
    import pandas as pd

    from bioplaus.sweep.report import OLD_CSV_HEADER

    folder = pathlib.Path(logs[0]).parent
    old_row = ["x", "", "", "", "", "", "1", "1", "1", "1", "1", *[""] * (len(OLD_CSV_HEADER) - 11)]
    # a table that merely starts with that header (a user's, made from one) is not the report's to replace
    (folder / "results.csv").write_text(",".join(OLD_CSV_HEADER[:11]) + "\nx,,,,,,1,1,1,1,1\n")
    assert sweep_mod.main(["--report", str(folder)], out=io.StringIO()) == 2
    assert "results.csv was not written by bioplaus" in capsys.readouterr().err
    (folder / "results.csv").write_text(",".join(OLD_CSV_HEADER) + "\n" + ",".join(old_row) + "\n")
    assert sweep_mod.main(["--report", str(folder)], out=io.StringIO()) == 0
    df = pd.read_csv(folder / "results.csv")
    assert list(df.run) == ["a", "b"] and list(df.variant) == ["glob", "predsim"]
