"""One ``bioplaus`` command (issue 25, point 3): subcommands run, sweep, report, figures, describe, recipes;
``python -m bioplaus``; ``--version``; sims/*.py as thin wrappers; every message quotes the command typed;
a listing piped into ``head`` ends without a BrokenPipeError traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import bioplaus
from bioplaus.command import EXIT_BROKEN_PIPE, dispatch
from bioplaus.log import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--variant", "predsim", "--num-layers", "1", "--num-hidden", "16", "--device", "cpu", "--no-progress",
        "--epochs", "1", "--threads", "1"]


def python_m(*argv, cwd=ROOT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bioplaus", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False, **kwargs)


def test_version_and_help(capsys):
    assert dispatch(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bioplaus {bioplaus.__version__}"
    assert dispatch(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "sweep", "report", "figures", "describe", "recipes"):
        assert f"\n  {command} " in out


@pytest.mark.parametrize("argv,words", [([], "needs a command"), (["rn"], "did you mean run?"),
                                        (["frobnicate"], "unknown command")])
def test_no_or_unknown_command_is_one_sentence(argv, words, capsys):
    assert dispatch(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0] and captured.out == ""


def test_each_subcommand_names_itself_as_typed(capsys):
    for command, usage in (("run", "usage: bioplaus run"), ("sweep", "usage: bioplaus sweep"),
                           ("report", "usage: bioplaus report"), ("figures", "usage: bioplaus figures"),
                           ("describe", "usage: bioplaus describe"), ("recipes", "usage: bioplaus recipes")):
        assert dispatch([command, "--help"]) == 0, command
        assert capsys.readouterr().out.startswith(usage), command
    assert dispatch(["run", "--help"], "python -m bioplaus") == 0
    assert capsys.readouterr().out.startswith("usage: python -m bioplaus run")


def test_a_run_quotes_the_command_in_its_hints(tmp_path, capsys):
    out = str(tmp_path / "a.h5")
    assert dispatch(["run", *TINY, "--out", out], "python -m bioplaus") == 0
    text = capsys.readouterr().out
    assert f"train on: python -m bioplaus run --resume {out} --epochs N" in text
    assert f"plot it: python -m bioplaus figures --logs {out}" in text
    assert read_run(out).status == "completed"


def test_describe_with_parallel_layers_describes_and_trains_nothing(tmp_path, capsys, monkeypatch):
    """``bioplaus describe --parallel layers`` (as under mpiexec) printed nothing and started a pipelined run."""
    monkeypatch.chdir(tmp_path)
    assert dispatch(["describe", "--model", "mlp", "--parallel", "layers", "--ranks", "2"], "bioplaus") == 0
    text = capsys.readouterr().out
    assert "rank" in text and text.strip().splitlines()[-1].startswith("parameters: ")
    assert list(tmp_path.iterdir()) == []


def test_python_m_bioplaus_and_the_wrappers(tmp_path):
    proc = python_m("--version", cwd=str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.strip() == f"bioplaus {bioplaus.__version__}"
    proc = python_m("describe", "--variant", "glob", cwd=str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1].startswith("parameters: ")
    for script, usage in (("run.py", "usage: python sims/run.py"), ("sweep.py", "usage: python sims/sweep.py"),
                          ("figures.py", "usage: python sims/figures.py")):
        proc = subprocess.run([sys.executable, os.path.join("sims", script), "--help"], capture_output=True,
                              text=True, cwd=ROOT, timeout=120, check=False)
        assert proc.returncode == 0 and proc.stdout.startswith(usage), (script, proc.stdout[:200], proc.stderr)
    run_alias = shutil.which("bioplaus-run", path=os.path.dirname(sys.executable))
    if run_alias:  # the console scripts of this environment's install
        proc = subprocess.run([run_alias, "--help"], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: bioplaus-run")


def test_recipes_lists_and_filters(capsys):
    assert dispatch(["recipes", "cifar10-vgg8b-pred*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["cifar10-vgg8b-pred", "cifar10-vgg8b-predsim", "cifar10-vgg8b-pred-bpf", "cifar10-vgg8b-predsim-bpf"]
    assert dispatch(["recipes", "nothing-*"]) == 2
    assert capsys.readouterr().err.startswith("error: no recipe matches 'nothing-*'; bioplaus recipes lists them")


def test_report_of_a_folder_without_logs_is_one_sentence(tmp_path, capsys):
    assert dispatch(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no run logs in")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["-m", "bioplaus", "recipes"], ["-m", "bioplaus", "describe", "--config"],
                                  ["sims/run.py", "--list-recipes"], ["sims/run.py", "--list-variants"],
                                  ["sims/run.py", "--help"], ["-m", "bioplaus", "sweep", "--help"]])
def test_output_cut_short_ends_quietly(argv):
    """``... | head``: the reader is gone before the first line; no traceback, status 141 (as by SIGPIPE)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone: the first write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, *argv], stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              timeout=120, check=False)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    # --help: newer Pythons' argparse drops a failed write itself and exits 0; older ones (3.11.2, Debian's)
    # let the BrokenPipeError out, and the command ends as any cut-short output does
    expected = (0, EXIT_BROKEN_PIPE) if "--help" in argv else (EXIT_BROKEN_PIPE,)
    assert proc.returncode in expected, proc.stderr


@pytest.mark.slow
def test_an_installed_sweep_needs_no_checkout(tmp_path):
    """``python -m bioplaus sweep`` from another folder starts its runs as ``python -m bioplaus run``."""
    out_dir = tmp_path / "sw"
    proc = python_m("sweep", "--recipes", "fashion-mnist-mlp-pred", "--epochs", "1", "--out-dir", str(out_dir),
                    "--set", "num_layers=1", "--set", "num_hidden=16", "--set", "device=cpu",
                    "--set", "dataset=fashion-mnist-mini", "--threads-per-job", "1", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"report: python -m bioplaus report {out_dir}" in proc.stdout
    console = (out_dir / "fashion-mnist-mlp-pred-s1.out").read_text()
    assert f"{sys.executable} -m bioplaus run --recipe fashion-mnist-mlp-pred" in console
    assert "--threads 1" in console
    assert read_run(str(out_dir / "fashion-mnist-mlp-pred-s1.h5")).status == "completed"
    record = (out_dir / "sweeps.jsonl").read_text()
    assert '"command": "python -m bioplaus sweep --recipes fashion-mnist-mlp-pred' in record
    proc = python_m("report", str(out_dir), cwd=str(tmp_path))
    assert proc.returncode == 0 and (out_dir / "results.md").is_file(), proc.stderr
    assert f"by `python -m bioplaus report {out_dir}`" in (out_dir / "results.md").read_text()
