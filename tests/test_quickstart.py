"""The README's two quick-start commands, exactly as written, each from a clean copy of the project.

Each command line runs through ``bash -c`` as a user who activated a fresh virtual environment:
``python -m venv`` from the base interpreter (never ``--system-site-packages``), then pip installs the
project and every dependency from the package index (build isolation on, no ``--no-deps``). A
dependency the project uses but does not declare therefore fails here, whatever the machine's own
Python happens to have. pip's download cache (``~/.cache/pip`` by default) is shared, so the second
environment downloads nothing again. Without access to the package index these tests fail (CI has it).

The second command runs the suite again inside the new environment (``BIOPLAUS_QUICKSTART_INNER=1``):
there this module skips itself, so that it does not recurse, and so do the other end-to-end tests
marked ``slow`` (whole runs in subprocesses, MPI, the notebooks), which the outer run of the same
suite has just run on the same code; everything else, and the collection of every module, runs.
"""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

INNER = "BIOPLAUS_QUICKSTART_INNER"
if os.environ.get(INNER) == "1":
    pytest.skip("the quick-start test's own inner run of the suite", allow_module_level=True)

from bioplaus.log import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README's quick-start commands, verbatim (test_readme_commands_are_these checks them against README.md).
MAIN_JOB = "pip install . && python sims/run.py --variant predsim-bpf"
TEST_JOB = 'pip install -e ".[test]" && python -m pytest -q'
TINY = "--variant predsim-bpf --epochs 1 --num-layers 1 --num-hidden 32 --device cpu --no-progress"
# Generous: pip downloads and builds, then a 10-epoch run or the whole suite, on 2 busy cores.
MAIN_TIMEOUT = 3600
TEST_TIMEOUT = 5400
# Not part of a user's fresh shell: another environment's, pytest's own, or a GPU-only switch (the new
# environment has no CuPy). PIP_NO_CACHE_DIR would stop the two environments sharing pip's cache.
DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST",
            "BIOPLAUS_REQUIRE_GPU", "PIP_NO_CACHE_DIR", INNER, "__PYVENV_LAUNCHER__")
NO_INDEX = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
            "Name or service not known", "Max retries exceeded", "ConnectTimeoutError", "ReadTimeoutError",
            "ProxyError", "SSLError", "Network is unreachable", "No matching distribution found",
            "Could not find a version that satisfies")

pytestmark = pytest.mark.slow


def clean_copy(dest: str) -> str:
    """The project's files as a fresh clone would have them (tracked and new, not ignored)."""
    try:
        listed = subprocess.run(args=["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                                capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "*.h5", "__pycache__",
                                                                  "*.egg-info", "build"))
        return dest
    for rel in filter(None, listed):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    return dest


def base_python() -> str:
    """The interpreter this environment was made from (itself outside a venv), as a real file."""
    for candidate in (getattr(sys, "_base_executable", None), sys.executable):
        if candidate:
            real = os.path.realpath(candidate)
            if os.path.isfile(real) and os.access(real, os.X_OK):
                return real
    pytest.fail(f"no base Python found (sys._base_executable={getattr(sys, '_base_executable', None)!r}, "
                f"sys.executable={sys.executable!r})")


def user_env(venv: str, **extra: str) -> dict:
    """The environment of a user who activated ``venv``: its bin first on PATH, no other venv on it."""
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    others = {os.path.join(p, "bin") for p in (os.environ.get("VIRTUAL_ENV"), sys.prefix) if p}
    if sys.prefix == sys.base_prefix:
        others.discard(os.path.join(sys.prefix, "bin"))  # the base Python's own bin stays, as for any user
    path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and os.path.realpath(p) not in
            {os.path.realpath(o) for o in others}]
    env["PATH"] = os.pathsep.join([os.path.join(venv, "bin"), *path])
    env.update(extra)
    return env


def make_venv(path: str) -> str:
    """``python -m venv PATH`` from the base interpreter (nothing of the project's dependencies)."""
    py = base_python()
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    proc = subprocess.run([py, "-m", "venv", path], cwd=os.path.dirname(path), env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{py} -m venv {path} failed:\n{proc.stdout}\n{proc.stderr}"
    with open(os.path.join(path, "pyvenv.cfg")) as f:
        assert "include-system-site-packages = false" in f.read()
    return path


def bash(line: str, cwd: str, env: dict, log: str, timeout: int) -> tuple[int, str]:
    """Run ``bash -c LINE``; stdout and stderr go (interleaved) to the file ``log``. (status, output)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", line], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout=timeout)
        except BaseException as exc:  # a timeout, or Ctrl-C on the outer run: end what this started
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                pytest.fail(f"`{line}` (in {cwd}) ran past {timeout} s; its output: {log}\n{tail(log)}")
            raise
    with open(log, errors="replace") as f:
        return status, f.read()


def tail(log: str, n: int = 4000) -> str:
    with open(log, errors="replace") as f:
        return f.read()[-n:]


def check_ok(line: str, cwd: str, status: int, output: str, log: str) -> None:
    if status == 0:
        return
    if "pip" in line and any(s in output for s in NO_INDEX):
        pytest.fail(f"pip could not get the project's requirements from the package index (no network or no "
                    f"registry access; this test needs it, and CI has it): `{line}` in {cwd} exited {status}; "
                    f"its output: {log}\n{tail(log)}")
    pytest.fail(f"`{line}` in {cwd} exited {status}; its output: {log}\n{tail(log)}")


@pytest.fixture
def copy(tmp_path):
    """A clean copy of the project for one test alone."""
    return clean_copy(str(tmp_path / "bioplaus"))


def test_readme_commands_are_these():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    blocks = re.findall(r"```bash\n(.*?)```", readme.split("## Quick start", 1)[1].split("\n## ", 1)[0], re.DOTALL)
    assert [b.strip() for b in blocks] == [MAIN_JOB, TEST_JOB]


def test_install_and_run_the_main_job(copy, tmp_path):
    """`pip install . && python sims/run.py --variant predsim-bpf`: the default run, 10 epochs."""
    venv = make_venv(str(tmp_path / "venv"))
    env = user_env(venv)
    log = str(tmp_path / "main-job.log")
    status, output = bash(MAIN_JOB, cwd=copy, env=env, log=log, timeout=MAIN_TIMEOUT)
    check_ok(MAIN_JOB, copy, status, output, log)
    reported = re.findall(r"^log: (runs/\S+\.h5)$", output, re.MULTILINE)
    assert len(reported) == 1, f"no one `log: runs/...h5` line in the run's output: {log}\n{output[-4000:]}"
    rel = reported[0]
    assert f"done: 10 epochs; log: {rel}" in output, output[-4000:]
    assert os.path.basename(rel).startswith("predsim-bpf-mlp-fashion-mnist-mini-"), rel
    path = os.path.join(copy, rel)
    assert os.path.isfile(path), f"the run reported {rel} but {path} does not exist"
    run = read_run(path)
    assert run.status == "completed" and run.num_epochs == 10, (run.status, run.num_epochs)
    assert run.config.variant == "predsim-bpf" and run.config.epochs == 10

    # the installed package alone (console script, in another folder): its package data was installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    line = f"bioplaus-run {TINY}"
    status, output = bash(line, cwd=str(elsewhere), env=env, log=str(tmp_path / "console-script.log"), timeout=900)
    check_ok(line, str(elsewhere), status, output, str(tmp_path / "console-script.log"))
    logs = [f for f in os.listdir(elsewhere / "runs") if f.endswith(".h5")]
    assert len(logs) == 1 and logs[0].startswith("predsim-bpf-mlp-fashion-mnist-mini-"), logs
    assert read_run(str(elsewhere / "runs" / logs[0])).status == "completed"
    # the one command: a sweep and its report without the checkout (its runs start as python -m bioplaus run)
    line = ("bioplaus --version && bioplaus sweep --recipes fashion-mnist-mlp-pred --epochs 1 --out-dir sw "
            "--set dataset=fashion-mnist-mini --set num_hidden=16 --set num_layers=1 --threads-per-job 1 "
            "&& bioplaus report sw")
    status, output = bash(line, cwd=str(elsewhere), env=env, log=str(tmp_path / "command.log"), timeout=900)
    check_ok(line, str(elsewhere), status, output, str(tmp_path / "command.log"))
    assert read_run(str(elsewhere / "sw" / "fashion-mnist-mlp-pred-s1.h5")).status == "completed"
    assert (elsewhere / "sw" / "results.md").is_file() and "report: bioplaus report sw" in output
    probe = ("import os, bioplaus; from bioplaus.recipes import list_recipes; print(bioplaus.__file__); "
             "print(len(list_recipes())); "
             "print(sorted(os.listdir(os.path.join(os.path.dirname(bioplaus.__file__), "
             "'data', 'embedded', 'fashion-mnist-mini'))))")
    line = f'python -c "{probe}"'
    status, output = bash(line, cwd=str(elsewhere), env=env, log=str(tmp_path / "package.log"), timeout=300)
    check_ok(line, str(elsewhere), status, output, str(tmp_path / "package.log"))
    where, recipes, embedded = output.strip().splitlines()[-3:]
    assert where.startswith(venv + os.sep) and "site-packages" in where, where  # installed, not the source tree
    assert int(recipes) == 96, recipes
    for name in ("train-images-idx3-ubyte.xz", "train-labels-idx1-ubyte.xz", "t10k-images-idx3-ubyte.xz",
                 "t10k-labels-idx1-ubyte.xz"):
        assert name in embedded, embedded


def test_editable_install_runs_the_whole_suite(copy, tmp_path):
    """`pip install -e ".[test]" && python -m pytest -q`: the whole suite passes in the new environment."""
    venv = make_venv(str(tmp_path / "venv"))
    env = user_env(venv, **{INNER: "1"})
    log = str(tmp_path / "test-job.log")
    status, output = bash(TEST_JOB, cwd=copy, env=env, log=log, timeout=TEST_TIMEOUT)
    check_ok(TEST_JOB, copy, status, output, log)
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else ""
    assert re.search(r"\b\d+ passed\b", summary) and "failed" not in summary and "error" not in summary, (
        f"inner suite summary: {summary!r}; its output: {log}\n{output[-4000:]}")
    # Not from tmp_path: the copy lies there as `bioplaus/`, and Python would import that folder from
    # the current directory as a namespace package ahead of the editable install.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    line = 'python -c "import bioplaus; print(bioplaus.__file__)"'
    status, output = bash(line, cwd=str(elsewhere), env=env, log=str(tmp_path / "editable.log"), timeout=300)
    check_ok(line, str(elsewhere), status, output, str(tmp_path / "editable.log"))
    assert output.strip().splitlines()[-1] == os.path.join(copy, "bioplaus", "__init__.py")
