"""The README's two quick-start commands, from a clean copy of the project in fresh virtual environments.

Offline-friendly: the venvs see the system site-packages (numpy, h5py, ... are not downloaded again)
and pip installs with ``--no-deps`` (build isolation first, as a user's pip would; without it when
no build backend can be fetched); what is checked is that the project installs, ships its data
(recipes, embedded dataset), and runs the main job to a completed log.
"""

import os
import shutil
import subprocess
import sys

import pytest

from bioplaus.log import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--variant", "predsim-bpf", "--epochs", "1", "--num-layers", "1", "--num-hidden", "32", "--device", "cpu",
        "--no-progress"]

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


def sh(args, cwd, timeout=600, ok=True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(args=args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if ok:
        assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def pip_install(py: str, cwd: str, *target: str) -> None:
    base = [py, "-m", "pip", "install", "--no-deps", "-q"]
    if sh([*base, *target], cwd=cwd, ok=False).returncode != 0:
        sh([*base, "--no-build-isolation", *target], cwd=cwd)


def venv(path: str) -> str:
    sh([sys.executable, "-m", "venv", "--system-site-packages", path], cwd=os.path.dirname(path))
    return os.path.join(path, "bin", "python")


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    return clean_copy(str(tmp_path_factory.mktemp("quickstart") / "bioplaus"))


def test_install_and_run_the_main_job(copy, tmp_path):
    """`pip install . && python sims/run.py --variant predsim-bpf` (tiny and one epoch here)."""
    py = venv(str(tmp_path / "venv"))
    pip_install(py, copy, ".")
    # from the copy, as the README says
    proc = sh([py, "sims/run.py", *TINY, "--out", "runs/quick.h5"], cwd=copy)
    assert "log: runs/quick.h5" in proc.stdout
    run = read_run(os.path.join(copy, "runs", "quick.h5"))
    assert run.status == "completed" and run.num_epochs == 1 and run.config.variant == "predsim-bpf"
    # the installed package alone (console script, elsewhere): package data must have been installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bindir = os.path.dirname(py)
    proc = sh([os.path.join(bindir, "bioplaus-run"), *TINY], cwd=str(elsewhere))
    logs = [f for f in os.listdir(elsewhere / "runs") if f.endswith(".h5")]
    assert len(logs) == 1 and logs[0].startswith("predsim-bpf-mlp-fashion-mnist-mini-")
    assert read_run(str(elsewhere / "runs" / logs[0])).status == "completed"
    where = sh([py, "-c", "import bioplaus; print(bioplaus.__file__)"], cwd=str(elsewhere)).stdout.strip()
    assert where.startswith(str(tmp_path / "venv")), where
    sh([py, "-c", "from bioplaus.recipes import list_recipes; assert len(list_recipes()) == 86"], cwd=str(elsewhere))


def test_editable_install_runs_tests(copy, tmp_path):
    """`pip install -e ".[test]" && python -m pytest -q` (a fast test file here, not the whole suite)."""
    py = venv(str(tmp_path / "venv"))
    pip_install(py, copy, "-e", ".")
    where = sh([py, "-c", "import bioplaus; print(bioplaus.__file__)"], cwd=str(tmp_path)).stdout.strip()
    assert where == os.path.join(copy, "bioplaus", "__init__.py")
    proc = sh([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_recipes.py"], cwd=copy)
    assert " passed" in proc.stdout and "failed" not in proc.stdout
