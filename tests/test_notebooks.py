"""Every analysis notebook and teaching lab runs headless (nbclient) in its own folder, as Jupyter runs it,
without errors, and leaves nothing behind: its small runs go to a temporary folder that is gone once its
kernel has stopped, and the checkout is as it was (no ``small-runs-*``, no lock files, ``git status``
unchanged).

The kernel is this test run's own Python (a kernel spec written to a temporary JUPYTER_PATH with
``sys.executable``), with the repository on PYTHONPATH. Labs run twice: with the solutions from
``analysis/labs/solutions/`` pasted over the exercise stubs (every check prints "correct"), and as
given to students, on the logs of the first run (every check prints "not yet right").
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
ANALYSIS = ROOT / "analysis"
SOLUTIONS = ANALYSIS / "labs" / "solutions"
NOTEBOOKS = ["optimization_vs_generalization.ipynb", "layer_dynamics.ipynb", "paper_comparison.ipynb",
             "rules_family.ipynb", "why_local_works.ipynb"]
LABS = ["labs/01_global_vs_local.ipynb", "labs/02_similarity_matching.ipynb", "labs/03_backprop_free.ipynb",
        "labs/04_weight_transport.ipynb", "labs/05_layers_in_parallel.ipynb"]
KERNEL = "bioplaus-test"
TIMEOUT = 300  # seconds per cell

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def kernel_env(tmp_path_factory):
    """A kernel spec that runs sys.executable, found through JUPYTER_PATH; the repo on PYTHONPATH."""
    jpath = tmp_path_factory.mktemp("jupyter")
    spec = jpath / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bioplaus tests", "language": "python",
    }))
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "PYTHONPATH", "MPLBACKEND")}
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(jpath), *filter(None, [saved["JUPYTER_PATH"]])])
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [saved["PYTHONPATH"]])])
    # headless: the kernel's inline backend renders with Agg; nothing opens a window
    os.environ.pop("MPLBACKEND", None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def load(rel: str):
    return nbformat.read(str(ANALYSIS / rel), as_version=4)


def set_parameters(nb, text: str) -> None:
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n" + text


def execute(nb, cwd: Path):
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()  # raises CellExecutionError on any error in any cell
    return nb


def tree_state():
    """What is in the checkout: every file under analysis/ (ignored ones too), the top-level names, and
    ``git status --porcelain`` where git can read the checkout."""
    files = sorted(str(p.relative_to(ROOT)) for p in ANALYSIS.rglob("*"))
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        status = None
    return files, sorted(os.listdir(ROOT)), status


def execute_in_place(nb, rel: str, tmp_path: Path, monkeypatch):
    """Run the notebook in its own folder of the checkout (as Jupyter does) with the kernel's temporary folder
    in ``tmp_path/tmp``; assert that it left the checkout as it was. Returns the notebook."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(tmp))  # the kernel's tempfile folder
    before = tree_state()
    execute(nb, (ANALYSIS / rel).parent)
    assert tree_state() == before, "running the notebook changed the checkout"
    return nb


def made_runs_in(nb, tmp_path: Path) -> list[str]:
    """The temporary folders the notebook said it trained in; each must be gone now that its kernel stopped."""
    said = "".join(text_of(c) for c in nb.cells)
    folders = re.findall(r"small run\(s\) in (\S+) \(removed", said)
    for folder in folders:
        assert folder.startswith(str(tmp_path / "tmp")), folder
        assert not os.path.exists(folder), f"{folder} was not removed when the kernel stopped"
    return folders


def text_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def exercises(nb):
    """(name, index of the exercise cell, index of its check cell) for every exercise."""
    out = []
    for i, c in enumerate(nb.cells):
        if "exercise" in c.metadata.get("tags", []):
            name = c.metadata["exercise"]
            j = next(k for k in range(i + 1, len(nb.cells))
                     if nb.cells[k].cell_type == "code" and f'check("{name}"' in nb.cells[k].source)
            out.append((name, i, j))
    return out


def test_built_notebooks_are_the_committed_ones(tmp_path):
    sys.path.insert(0, str(ANALYSIS))
    try:
        import build_notebooks
    finally:
        sys.path.remove(str(ANALYSIS))
    for path in build_notebooks.build(tmp_path):
        rel = path.relative_to(tmp_path)
        assert path.read_text() == (ANALYSIS / rel).read_text(), f"{rel} differs: run analysis/build_notebooks.py"


@pytest.mark.parametrize("rel", NOTEBOOKS + LABS)
def test_committed_without_outputs_and_with_a_parameter_cell(rel):
    nb = load(rel)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "LOGS = []" in params[0].source


@pytest.mark.parametrize("rel", LABS)
def test_lab_stubs_hide_the_solutions(rel):
    nb = load(rel)
    found = exercises(nb)
    assert found, "a lab needs at least one exercise"
    for name, i, _ in found:
        stub = nb.cells[i].source
        assert "raise NotImplementedError" in stub and f"def {name}(" in stub
        solution = (SOLUTIONS / f"{name}.py").read_text()
        body = [ln.strip() for ln in solution.splitlines() if ln.strip() and not ln.strip().startswith(("def ", '"""', "import", "#"))]
        assert not any(ln in stub for ln in body), f"the stub of {name} shows solution code"


@pytest.mark.parametrize("rel", NOTEBOOKS)
def test_analysis_notebook_runs_and_leaves_the_checkout_clean(rel, tmp_path, monkeypatch):
    nb = execute_in_place(load(rel), rel, tmp_path, monkeypatch)
    assert made_runs_in(nb, tmp_path), "the notebook should have made its own small runs"
    if rel == "paper_comparison.ipynb":
        out = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", []))
        assert "| glob | fashion-mnist-mini | mlp-3x1024 |" in out and "epochs 2 (paper 200)" in out
    else:
        assert images(nb) >= 1


@pytest.mark.parametrize("rel", LABS)
def test_lab_checks_pass_when_solved_and_fail_when_blank(rel, tmp_path, monkeypatch):
    """Solved, with RUNS_DIR naming where its small runs are kept (the analysis notebooks above prove the
    temporary folder); then as given to students, on those logs."""
    kept = tmp_path / "kept"
    solved = load(rel)
    set_parameters(solved, f"RUNS_DIR = {str(kept)!r}")
    found = exercises(solved)
    for name, i, _ in found:
        solved.cells[i].source = (SOLUTIONS / f"{name}.py").read_text()
    execute_in_place(solved, rel, tmp_path, monkeypatch)
    for name, _, j in found:
        out = text_of(solved.cells[j])
        assert f"{name}: correct" in out and "not yet right" not in out, out
    assert images(solved) >= 1
    logs = sorted(str(p) for p in kept.glob("small-runs-*/*.h5"))
    assert logs and not made_runs_in(solved, tmp_path)

    blank = load(rel)
    set_parameters(blank, f"LOGS = {logs!r}")
    execute_in_place(blank, rel, tmp_path, monkeypatch)  # runs to the end: a blank exercise is reported, not raised
    assert not made_runs_in(blank, tmp_path), "with LOGS given the notebook should not train"
    assert sorted(str(p) for p in kept.glob("small-runs-*/*.h5")) == logs
    for name, _, j in found:
        out = text_of(blank.cells[j])
        assert f"{name}: not yet right" in out and f"{name}: correct" not in out, out
