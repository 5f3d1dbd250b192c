"""Sweeps (sims/sweep.py, bioplaus.sweep) and their report (bioplaus.analysis.results_table).

Tiny runs on the embedded data (a 1x16 mlp, a few epochs, about a second each): a sweep of 2 recipes x
2 seeds with 2 jobs, stopped with SIGINT, then killed with SIGKILL, then run again, ends with every log
completed and every number equal, bit for bit, to the same run made alone with sims/run.py; the same
sweep under mpiexec; a grid's names and report; a failed run that does not stop the others; bad input.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from bioplaus import analysis
from bioplaus import sweep as sweep_mod
from bioplaus.checkpoint import checkpoint_path, load_checkpoint
from bioplaus.log import read_run

pytestmark = pytest.mark.slow  # end-to-end: processes, whole runs (see tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "sims", "run.py")
SWEEP = os.path.join(ROOT, "sims", "sweep.py")
RECIPES = ("fashion-mnist-mlp-pred", "fashion-mnist-mlp-sim")
SEEDS = (1, 2)
EPOCHS = 4
TINY = {"num_layers": "1", "num_hidden": "16", "dataset": "fashion-mnist-mini", "device": "cpu"}
ONE_THREAD = {v: "1" for v in sweep_mod.THREAD_VARS}


def sweep_argv(out_dir, *extra, recipes=RECIPES, seeds=SEEDS, epochs=EPOCHS) -> list[str]:
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    return ["--recipes", *recipes, "--seeds", *map(str, seeds), "--out-dir", str(out_dir), "--epochs", str(epochs),
            *sets, "--threads-per-job", "1", *extra]


def start_sweep(argv, prefix=()) -> subprocess.Popen:
    """The sweep as a terminal would start it: its own process group (so Ctrl-C can go to the group)."""
    return subprocess.Popen([*prefix, sys.executable, *(["-m", "mpi4py.futures"] if prefix else []), SWEEP, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True, env=dict(os.environ, **ONE_THREAD))


def finish(proc: subprocess.Popen, timeout: float = 150) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the sweep did not end within {timeout}s:\n{out}") from None
    return proc.returncode, out


def logs(out_dir) -> dict[str, str]:
    return {f[:-3]: os.path.join(out_dir, f) for f in sorted(os.listdir(out_dir)) if f.endswith(".h5")}


def statuses(out_dir) -> dict[str, tuple[str, int]]:
    out = {}
    for name, path in logs(out_dir).items():
        r = read_run(path)
        out[name] = (r.status, r.num_epochs)
    return out


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_same_numbers(ref_path: str, path: str) -> None:
    """Every logged series but the timings, every probe array and every checkpoint array equal, bit for bit."""
    a, b = read_run(ref_path), read_run(path)
    assert b.status == "completed" and a.config == b.config
    assert set(a.epochs) == set(b.epochs) and set(a.layers) == set(b.layers)
    for key in a.epochs:
        if key != "seconds":
            np.testing.assert_array_equal(a.epochs[key], b.epochs[key], err_msg=f"{path}: {key}")
    for layer in a.layers:
        for key in a.layers[layer]:
            np.testing.assert_array_equal(a.layers[layer][key], b.layers[layer][key], err_msg=f"{path}: {layer}/{key}")
    sa, ma = load_checkpoint(checkpoint_path(ref_path))
    sb, mb = load_checkpoint(checkpoint_path(path))
    assert ma["epoch"] == mb["epoch"] == EPOCHS and set(sa) == set(sb)
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=f"{path}: checkpoint {key}")


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, str]:
    """Each run of the sweep made alone with sims/run.py (flags written out here, not by the sweep)."""
    folder = tmp_path_factory.mktemp("alone")
    procs = {}
    for recipe in RECIPES:
        for seed in SEEDS:
            out = str(folder / f"{recipe}-s{seed}.h5")
            argv = [sys.executable, RUN, "--recipe", recipe, "--seed", str(seed), "--epochs", str(EPOCHS),
                    "--num-layers", "1", "--num-hidden", "16", "--dataset", "fashion-mnist-mini", "--device", "cpu",
                    "--no-progress", "--out", out]
            procs[out] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                          env=dict(os.environ, **ONE_THREAD))
    for out, proc in procs.items():
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, text
    return logs(folder)


# ---------------------------------------------------------------------- stopped, killed, restarted
def test_sweep_stopped_killed_and_restarted_gives_the_runs_made_alone(tmp_path, references):
    out_dir = tmp_path / "sweep"
    argv = sweep_argv(out_dir, "--jobs", "2")

    # 1. Ctrl-C (SIGINT to the sweep's process group, as a terminal sends it) once the first epoch is logged.
    proc = start_sweep(argv)
    wait_until(lambda: out_dir.is_dir() and any(sweep_mod.epochs_in_log(p) >= 1 for p in logs(out_dir).values()),
               90, "the first logged epoch")
    os.killpg(proc.pid, signal.SIGINT)
    rc, text = finish(proc)
    assert rc == sweep_mod.EXIT_INTERRUPTED, text
    assert "interrupted; run the same command again" in text
    first = statuses(out_dir)
    assert "interrupted" in {s for s, _ in first.values()}, first
    # every child that had trained marked its log before the sweep ended (one stopped in its first instants may
    # leave a log of 0 epochs 'running', which resumes the same way)
    assert all(s != "running" for s, n in first.values() if n), first
    assert not any(sweep_mod.lock_held(p) for p in logs(out_dir).values())  # and no child outlives the sweep

    # 2. SIGKILL the sweep (its whole process group) as soon as a run has made progress: its children are
    # told to stop (SIGINT on their parent's death), so no run is left behind writing a log.
    before = {name: n for name, (_, n) in first.items()}
    proc = start_sweep(argv)

    def progressed() -> bool:
        return any(sweep_mod.epochs_in_log(p) > before.get(name, 0) for name, p in logs(out_dir).items())

    wait_until(progressed, 90, "progress after the restart")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    wait_until(lambda: not any(sweep_mod.lock_held(p) for p in logs(out_dir).values()), 30,
               "the killed sweep's runs to stop")
    second = statuses(out_dir)
    assert any(s != "completed" for s, _ in second.values()) or len(second) < 4, second

    # 3. The same command again finishes the sweep.
    rc, text = finish(start_sweep(argv))
    assert rc == 0, text
    assert "resume " in text
    assert statuses(out_dir) == {name: ("completed", EPOCHS) for name in references}
    for name, ref in references.items():
        assert_same_numbers(ref, logs(out_dir)[name])

    # 4. And once more: nothing to do, nothing touched.
    stamps = {p: os.stat(p).st_mtime_ns for p in logs(out_dir).values()}
    rc, text = finish(start_sweep(argv))
    assert rc == 0 and "0 completed now, 4 already complete" in text, text
    assert stamps == {p: os.stat(p).st_mtime_ns for p in logs(out_dir).values()}


def _mpiexec() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.isfile(beside) else shutil.which("mpiexec")


def test_sweep_under_mpi(tmp_path, references):
    pytest.importorskip("mpi4py.futures", reason="mpi4py is not installed")
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec on this machine")
    out_dir = tmp_path / "mpi"
    rc, text = finish(start_sweep(sweep_argv(out_dir), prefix=(mpiexec, "-n", "3")), timeout=180)
    assert rc == 0, text
    assert "2 MPI workers" in text, text
    assert statuses(out_dir) == {name: ("completed", EPOCHS) for name in references}
    for name, ref in references.items():
        assert_same_numbers(ref, logs(out_dir)[name])


# ---------------------------------------------------------------------- a grid, and its report
def test_grid_names_and_report(tmp_path, capsys):
    out_dir = tmp_path / "grid"
    argv = sweep_argv(out_dir, "--jobs", "2", "--set", "lr=2e-3,5e-4", recipes=RECIPES[:1], epochs=2)
    assert sweep_mod.main(argv, run_script=RUN) == 0, capsys.readouterr()
    names = sorted(logs(out_dir))
    assert names == [f"fashion-mnist-mlp-pred-lr{lr}-s{s}" for lr in ("2e-3", "5e-4") for s in SEEDS]
    assert read_run(logs(out_dir)["fashion-mnist-mlp-pred-lr2e-3-s2"]).config.lr == 2e-3
    # a log that is not completed is counted but left out of the statistics
    partial = out_dir / "fashion-mnist-mlp-pred-lr2e-3-s7.h5"
    shutil.copy(logs(out_dir)["fashion-mnist-mlp-pred-lr2e-3-s1"], partial)
    cfg = read_run(str(partial)).config.replace(seed=7)
    with h5py.File(partial, "r+") as f:
        f.attrs["status"] = "interrupted"
        f.attrs["config"] = cfg.to_json()
        f.attrs["seed"] = 7
    capsys.readouterr()

    assert sweep_mod.main(["--report", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    rows = analysis.results_table(str(out_dir))
    assert [r["label"] for r in rows] == ["fashion-mnist-mlp-pred (lr=0.0005)", "fashion-mnist-mlp-pred (lr=0.002)"]
    for row, lr in zip(rows, (5e-4, 2e-3)):
        finals = [read_run(p).epochs["test_error"][-1] for name, p in logs(out_dir).items()
                  if read_run(p).config.lr == lr and read_run(p).status == "completed"]
        assert row["seeds"] == 2 and row["seed_list"] == [1, 2]
        assert row["test_errors"] == pytest.approx(finals, abs=0)
        assert row["test_error_mean"] == pytest.approx(np.mean(finals), rel=1e-12)
        assert row["test_error_std"] == pytest.approx(np.std(finals, ddof=1), rel=1e-12)
        assert row["test_error_min"] == min(finals)
        assert row["paper_test_error"] == 8.60
        assert row["difference"] == pytest.approx(np.mean(finals) - 8.60)
        assert row["epochs"] == 2 and row["variant"] == "pred" and row["model"] == "mlp-3x1024"
        assert not row["matches_recipe"] and any(d.startswith("epochs 2") for d in row["differences"])
    assert rows[1]["runs"] == 3 and rows[1]["notes"] == ["seed 7 interrupted after 2 of 2 epochs"]
    assert rows[0]["runs"] == 2 and any(d.startswith("lr 0.002") for d in rows[1]["differences"])

    mark, md = (out_dir / "results.md").read_text().split("\n", 1)
    assert mark.startswith("<!-- written by bioplaus") and md.strip() in printed  # the mark line is not printed
    table = [ln for ln in md.splitlines() if ln.startswith("| fashion-mnist-mlp-pred")]
    assert len(table) == 2 and all(ln.split("|")[2].strip() == "2" for ln in table)
    assert f"{rows[0]['test_error_mean']:.2f} ± {rows[0]['test_error_std']:.2f}" in table[0]
    with open(out_dir / "results.csv", newline="") as fh:  # one row per run, the grid's setting a column
        csv_rows = list(csv.DictReader(fh))
    assert [r["run"] for r in csv_rows] == sorted(logs(out_dir))
    for r in csv_rows:
        log = read_run(logs(out_dir)[r["run"]])
        assert float(r["lr"]) == log.config.lr and int(r["seed"]) == log.config.seed and r["status"] == log.status
        assert float(r["test_error"]) == log.epochs["test_error"][-1] and int(r["epochs"]) == 2
    assert (out_dir / "results.png").stat().st_size > 1000

    paper = analysis.results_paper_markdown(rows)
    assert "### fashion-mnist" in paper and "| network | pred |" in paper
    cell = next(ln for ln in paper.splitlines() if ln.startswith("| mlp-3x1024"))
    assert cell.count("(8.60) *") == 2
    one = analysis.results_table([logs(out_dir)["fashion-mnist-mlp-pred-lr5e-4-s1"]])
    assert one[0]["seeds"] == 1 and np.isnan(one[0]["test_error_std"])
    assert "± - |" in analysis.results_markdown(one)


# ---------------------------------------------------------------------- failures do not stop the others
def test_failed_and_diverged_runs_are_reported_and_the_others_run(tmp_path, references, capsys):
    out_dir = tmp_path / "failing"
    out_dir.mkdir()
    broken = out_dir / "fashion-mnist-mlp-pred-s1.h5"
    shutil.copy(references["fashion-mnist-mlp-pred-s1"], broken)
    with h5py.File(broken, "r+") as f:
        f.attrs["status"] = "running"  # as after a kill -9 ...
    (out_dir / "fashion-mnist-mlp-pred-s1.h5.ckpt.npz").write_bytes(b"not a checkpoint")  # ... with a bad checkpoint
    diverged = out_dir / "fashion-mnist-mlp-pred-s2.h5"
    shutil.copy(references["fashion-mnist-mlp-pred-s2"], diverged)
    with h5py.File(diverged, "r+") as f:
        f.attrs["status"] = "diverged"
        f.attrs["message"] = "loss is nan at epoch 3"

    rc = sweep_mod.main(sweep_argv(out_dir, "--jobs", "2"), run_script=RUN)
    text = capsys.readouterr().out
    assert rc == sweep_mod.EXIT_FAILED, text
    assert "fashion-mnist-mlp-pred-s1 failed with status 2: error: cannot resume" in text
    assert "1 diverged (fashion-mnist-mlp-pred-s2)" in text and "1 failed (fashion-mnist-mlp-pred-s1)" in text
    got = statuses(out_dir)
    assert got["fashion-mnist-mlp-sim-s1"] == got["fashion-mnist-mlp-sim-s2"] == ("completed", EPOCHS)
    assert got["fashion-mnist-mlp-pred-s2"][0] == "diverged"
    rows = {r["label"]: r for r in analysis.results_table(str(out_dir))}
    assert rows["fashion-mnist-mlp-pred"]["seeds"] == 0 and len(rows["fashion-mnist-mlp-pred"]["notes"]) == 2
    assert rows["fashion-mnist-mlp-sim"]["seeds"] == 2


# ---------------------------------------------------------------------- naming and bad input
def test_plan_names_a_grid_and_writes_nothing(tmp_path, capsys):
    out_dir = tmp_path / "plan"
    argv = sweep_argv(out_dir, "--set", "lr=1e-3,5e-4", "--set", "dropout=0,0.1", "--dry-run",
                      recipes=["fashion-mnist-mlp-p*"], seeds=[3])
    assert sweep_mod.main(argv, run_script=RUN) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [os.path.basename(ln.split()[1]) for ln in lines[:-1]]
    assert names == [f"{r}-lr{lr}-dropout{d}-s3.h5" for r in ("fashion-mnist-mlp-pred", "fashion-mnist-mlp-predsim")
                     for lr in ("1e-3", "5e-4") for d in ("0", "0.1")]
    assert lines[-1] == "8 runs: 8 new"
    assert not out_dir.exists()
    assert sweep_mod.run_name("x", [("lr_decay_milestones", "50 75")], 1) == "x-lr-decay-milestones50_75-s1"


def _refused(argv, capsys) -> str:
    rc = sweep_mod.main(argv, run_script=RUN)
    err = capsys.readouterr().err
    assert rc == sweep_mod.EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("extra, words", [
    (["--recipes", "fashion-mnist-mlp-prd"], "unknown recipe 'fashion-mnist-mlp-prd'; did you mean"),
    (["--recipes", "nothing-like-this-*"], "no recipe matches"),
    (["--set", "num_hiden=32"], "no flag --num-hiden; did you mean num_hidden?"),
    (["--set", "lr=fast"], "--set lr takes a number"),
    (["--set", "lr=-1"], "--lr must be positive"),
    (["--set", "model=vgg99"], "unknown model 'vgg99'"),
    (["--set", "seed=3"], "use --seeds"),
    (["--set", "lr=1e-3,0.001"], "repeats a value"),
    (["--seeds", "one"], "--seeds takes an integer"),
    (["--seeds", "-1"], "--seeds must be at least 0"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--no-such-option"], "unrecognized arguments"),
])
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, capsys, extra, words):
    out_dir = tmp_path / "never"
    argv = sweep_argv(out_dir)
    if extra[0] == "--recipes":
        argv = [*extra, *argv[argv.index("--seeds"):]]
    elif extra[0] in ("--seeds", "--epochs"):
        i = argv.index(extra[0])
        argv = [*argv[:i], *extra, *argv[i + 1 + (2 if extra[0] == "--seeds" else 1):]]
    else:
        argv = [*argv, *extra]
    assert words in _refused(argv, capsys)
    assert not out_dir.exists()


def test_out_dir_that_is_a_file_and_report_without_logs(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert f"{afile} is not a folder" in _refused(sweep_argv(afile), capsys)
    assert "no run logs" in _refused(["--report", str(tmp_path)], capsys)
    assert "not a folder" in _refused(["--report", str(tmp_path / "missing")], capsys)
    assert "--out-dir DIR is needed" in _refused(["--recipes", RECIPES[0]], capsys)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_out_dir_in_a_folder_that_refuses_new_entries(tmp_path, capsys):
    # /proc passes os.access for root, so only the creation itself finds out; nothing may be left behind
    line = _refused(sweep_argv("/proc/bioplaus-never/sweep"), capsys)
    assert "--out-dir /proc/bioplaus-never/sweep" in line and "/proc does not accept new folders" in line
    assert not os.path.lexists("/proc/bioplaus-never")


def test_full_disk_when_the_sweep_starts_leaves_nothing(tmp_path, capsys, monkeypatch):
    import errno

    from bioplaus.sweep import cli

    def full(out_dir, *args):
        with open(os.path.join(out_dir, "sweeps.jsonl"), "a") as fh:
            fh.write('{"command": "cut sh')
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "_record", full)
    out_dir = tmp_path / "new" / "sweep"
    assert sweep_mod.main(sweep_argv(out_dir), run_script=RUN) == sweep_mod.EXIT_IO
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"  # a folder that was there keeps what it had
    kept.mkdir()
    (kept / "sweeps.jsonl").write_text("{}\n")
    assert sweep_mod.main(sweep_argv(kept), run_script=RUN) == sweep_mod.EXIT_IO
    assert sorted(p.name for p in kept.iterdir()) == ["sweeps.jsonl"]


def test_report_skips_damaged_lines_of_the_sweep_record(tmp_path, references, capsys):
    folder = tmp_path / "rec"
    folder.mkdir()
    shutil.copy(references["fashion-mnist-mlp-pred-s1"], folder / "fashion-mnist-mlp-pred-s1.h5")
    good = ('{"command": "python sims/sweep.py --recipes good", "host": "h", "jobs": 2, "mpi": false, '
            '"ranks_per_run": 1, "threads_per_job": 1, "started": "today"}')
    lines = ['{"command": "cut sh', "3", "[1]", '{"command": ["a list"]}', '{"command": "x", "ranks_per_run": "2"}',
             good]
    (folder / "sweeps.jsonl").write_text("".join(line + "\n" for line in lines))
    assert sweep_mod.main(["--report", str(folder)]) == 0, capsys.readouterr()
    md = (folder / "results.md").read_text()
    assert "`python sims/sweep.py --recipes good` on h (" in md
    assert "a list" not in md and "cut sh" not in md and "MPI ranks" not in md


def test_logs_of_another_configuration_refuse_the_sweep(tmp_path, references, capsys):
    out_dir = tmp_path / "taken"
    out_dir.mkdir()
    shutil.copy(references["fashion-mnist-mlp-pred-s1"], out_dir / "fashion-mnist-mlp-pred-s1.h5")
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    line = _refused([*sweep_argv(out_dir), "--set", "dropout=0.1"], capsys)
    assert "holds another configuration" in line and "dropout 0.025 (this sweep: 0.1)" in line
    line = _refused(sweep_argv(out_dir, epochs=EPOCHS - 1), capsys)
    assert f"holds a run of {EPOCHS} epochs and this sweep asks for {EPOCHS - 1}" in line
    (out_dir / "fashion-mnist-mlp-sim-s1.h5").write_text("not a log")
    before["fashion-mnist-mlp-sim-s1.h5"] = b"not a log"
    assert "is not a run log" in _refused(sweep_argv(out_dir), capsys)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before


def test_script_runs_from_anywhere(tmp_path):
    """sims/sweep.py as a user types it, from another folder: bad input is one line on stderr, status 2."""
    proc = subprocess.run([sys.executable, SWEEP, "--recipes", "no-such-recipe", "--out-dir", str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown recipe") and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_csv_writes_empty_fields_for_missing_numbers():
    row = {c: "" for c in analysis.RUNS_CSV_KEY}
    row.update(test_error=float("nan"), paper_test_error=float("nan"), lr_decay_milestones="100 150", cutout=True)
    parsed = next(csv.DictReader(io.StringIO(analysis.runs_csv([row]))))
    assert parsed["test_error"] == "" and parsed["paper_test_error"] == ""
    assert parsed["lr_decay_milestones"] == "100 150" and parsed["cutout"] == "True"


def test_an_io_failure_stops_new_runs(tmp_path, capsys):
    """A run that exits 74 (sims/run.py's I/O failure: a full disk) stops the sweep from starting more."""
    fake = tmp_path / "run.py"
    fake.write_text("import sys\nprint('error: no space left on device writing the log.', file=sys.stderr)\n"
                    "sys.exit(74)\n")
    out_dir = tmp_path / "full"
    rc = sweep_mod.main(sweep_argv(out_dir, "--jobs", "1"), run_script=str(fake))
    text = capsys.readouterr().out
    assert rc == sweep_mod.EXIT_IO, text
    assert text.count("sweep: start ") == 1 and "no new run starts" in text
    assert "error: no space left" in text and "3 not finished" in text


def test_time_left_uses_each_groups_measured_cost():
    left = [("a", 10), ("b", 4), ("c", 0)]
    # group a: 2 s an epoch; b measured too; c has nothing left
    assert sweep_mod.seconds_left(left, {"a": [1.0, 3.0], "b": [5.0]}, slots=1) == 10 * 2.0 + 4 * 5.0
    # two at a time halves it; more slots than runs do not
    assert sweep_mod.seconds_left(left, {"a": [2.0], "b": [5.0]}, slots=2) == (20 + 20) / 2
    assert sweep_mod.seconds_left(left, {"a": [2.0], "b": [5.0]}, slots=8) == (20 + 20) / 2
    # a group with nothing measured takes the mean of every measurement
    assert sweep_mod.seconds_left(left, {"a": [2.0, 4.0]}, slots=1) == 10 * 3.0 + 4 * 3.0
    # nothing measured yet: no estimate; nothing left: none needed
    assert sweep_mod.seconds_left(left, {}, slots=1) is None
    assert sweep_mod.seconds_left([("a", 0)], {}, slots=1) == 0.0


def test_time_left_while_the_first_runs_are_still_going(tmp_path, references):
    """Before any run has ended, the estimate comes from the running runs' epochs since their start."""
    from types import SimpleNamespace

    out_dir = tmp_path / "sweep"
    out_dir.mkdir()
    spec = sweep_mod.build_runs(RECIPES[:1], [1], 2 * EPOCHS, [], str(out_dir))[0]
    shutil.copyfile(references[spec.name], spec.path)  # a log at EPOCHS epochs
    plan = sweep_mod.Plan(spec, "extend", EPOCHS - 2)  # as if this sweep started it 2 epochs ago
    sweep = sweep_mod.Sweep([plan], SimpleNamespace(slots=1), RUN, str(out_dir), None, out=io.StringIO())
    assert sweep.eta() is None  # not running: nothing measured
    sweep.running.add(spec.name)
    sweep.started[spec.name] = time.monotonic() - 10.0  # 2 epochs in 10 s: 5 s an epoch
    assert sweep.eta() == pytest.approx(5.0 * EPOCHS, abs=1.0)  # EPOCHS still to go


# ---------------------------------------------------------------------- layer-parallel runs
def _needs_mpiexec() -> str:
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec on this machine")
    return mpiexec


def test_layer_parallel_runs_stopped_and_restarted_give_the_runs_made_alone(tmp_path):
    """--ranks-per-run 2: each run pipelined over 2 ranks (mpiexec), stopped and carried on; the logs are
    those of the runs made alone in one process, bit for bit."""
    _needs_mpiexec()
    alone = tmp_path / "alone"
    alone.mkdir()
    tiny = ["--num-layers", "2", "--num-hidden", "16", "--dataset", "fashion-mnist-mini", "--device", "cpu"]
    refs = {}
    for recipe in RECIPES:
        out = str(alone / f"{recipe}-s1.h5")
        done = subprocess.run([sys.executable, RUN, "--recipe", recipe, "--seed", "1", "--epochs", str(EPOCHS), *tiny,
                               "--no-progress", "--out", out], check=False, capture_output=True, text=True, cwd=ROOT,
                              timeout=300,
                              env=dict(os.environ, **ONE_THREAD))
        assert done.returncode == 0, done.stdout + done.stderr
        refs[f"{recipe}-s1"] = out
    out_dir = tmp_path / "pipelined"
    argv = [a.replace("num_layers=1", "num_layers=2") for a in sweep_argv(out_dir, "--ranks-per-run", "2", seeds=(1,))]

    proc = start_sweep(argv)
    wait_until(lambda: proc.poll() is not None or (
        out_dir.is_dir() and any(sweep_mod.epochs_in_log(p) >= 1 for p in logs(out_dir).values())),
        120, "the first logged epoch")
    assert proc.poll() is None, finish(proc)
    os.killpg(proc.pid, signal.SIGINT)
    rc, text = finish(proc)
    assert rc == sweep_mod.EXIT_INTERRUPTED, text
    assert "each over 2 MPI ranks" in text, text
    assert "interrupted" in {st for st, _ in statuses(out_dir).values()}, statuses(out_dir)

    rc, text = finish(start_sweep(argv), timeout=300)
    assert rc == 0 and "resume " in text, text
    assert statuses(out_dir) == {name: ("completed", EPOCHS) for name in refs}
    consoles = "".join((out_dir / f"{name}.out").read_text() for name in refs)
    assert "--parallel layers" in consoles and "mpiexec" in consoles  # they did run pipelined
    for name, ref in refs.items():
        assert_same_numbers(ref, logs(out_dir)[name])
    assert sweep_mod.main(["--report", str(out_dir)], out=io.StringIO()) == 0
    assert "each run over 2 MPI ranks (layer-parallel)" in (out_dir / "results.md").read_text()


@pytest.mark.parametrize("recipes, extra, words", [
    (RECIPES, ["--ranks-per-run", "1"], "--ranks-per-run must be at least 2"),
    (RECIPES, ["--ranks-per-run", "3"], "3 ranks are more than the 1 block of mlp"),
    (("fashion-mnist-mlp-glob",), ["--ranks-per-run", "2"], "cannot train glob"),
])
def test_layer_parallel_bad_input_is_refused(tmp_path, capsys, recipes, extra, words):
    _needs_mpiexec()
    out_dir = tmp_path / "never"
    assert words in _refused(sweep_argv(out_dir, *extra, recipes=recipes), capsys)
    assert not out_dir.exists()
