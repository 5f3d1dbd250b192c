"""sims/compare_authors.py's own logic, without the authors' code or any run: reading their time-stamped
console logs (a stopped and resumed run included), choosing the checkpoint a stopped run resumes from, and
the changes made to their train.py (each applied once, a folder prepared earlier brought up to date)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sims"))

import compare_authors as ca


def _epoch(t: float, epoch: int, train: float, test: float | None) -> list[str]:
    lines = [f"{t:.3f} Train epoch={epoch}, lr=5.00e-04, loss_local=0.4, loss_global=0.01, error={train}%, mem=0MiB"]
    if test is not None:
        lines.append(f"{t + 5:.3f} Test loss_global=0.0031, error={test}%")
    return lines


def test_a_resumed_log_reads_as_one_run_without_the_epoch_cut_short():
    log = ["100.000 # command (in run): python train.py", "101.000 Model vgg8b has 10250 parameters influenced"]
    log += _epoch(200, 1, 30.0, 20.0) + _epoch(300, 2, 20.0, 15.0)
    log += _epoch(400, 3, 18.0, None)  # stopped in epoch 3's test pass
    log += ["500.000 # resumed after epoch 2 with their --resume", "501.000 # command (in run): python train.py",
            "510.000 Model vgg8b has 10250 parameters influenced"]
    log += _epoch(600, 3, 17.5, 13.0)
    got = ca.parse_authors("\n".join(log))
    assert got["train_error"] == [30.0, 20.0, 17.5]
    assert got["test_error"] == [20.0, 15.0, 13.0]
    assert got["resumed_after"] == [2]
    # seconds: from the previous test line (or the start) to the Train line; the resumed epoch from its restart
    assert got["seconds"] == [pytest.approx(99.0), pytest.approx(95.0), pytest.approx(90.0)]


def _checkpoint(folder: Path, name: str, mtime: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"x")
    os.utime(folder / name, (mtime, mtime))


def test_a_stopped_run_resumes_only_from_the_checkpoint_of_its_last_logged_epoch(tmp_path):
    deep = tmp_path / "checkpoints" / "predsim-s1" / "FashionMNIST" / "vgg8b_mult0.2" / "settings"
    _checkpoint(deep, "chkp_ep1_lr5.00e-04_testerr19.99.tar", 1000)
    _checkpoint(deep, "chkp_ep2_lr5.00e-04_testerr14.98.tar", 2000)
    _checkpoint(deep, "chkp_last_epoch.tar", 2000)
    assert ca.resume_point(tmp_path, "predsim", 1, 2) == deep / "chkp_last_epoch.tar"
    assert ca.resume_point(tmp_path, "predsim", 1, 1) is None  # the log is behind the checkpoints: start again
    assert ca.resume_point(tmp_path, "predsim", 1, 3) is None  # no checkpoint of epoch 3
    assert ca.resume_point(tmp_path, "glob", 1, 2) is None
    _checkpoint(deep, "chkp_last_epoch.tar", 1500)  # older than epoch 2's own file: not the end of epoch 2
    assert ca.resume_point(tmp_path, "predsim", 1, 2) is None


def test_every_change_to_their_code_is_made_once_and_a_missing_one_is_refused():
    original = ("    def backward(context, grad_output):\n        input, weight = context.saved_variables\n"
                "        checkpoint = torch.load(args.resume)\n")
    once = ca.patch(original)
    assert "context.saved_tensors" in once and "saved_variables" not in once
    assert "torch.load(args.resume, weights_only=False)" in once
    assert ca.patch(once) == once  # a folder prepared before: left as it is
    half = original.replace("context.saved_variables", "context.saved_tensors")  # prepared before a newer change
    assert ca.patch(half) == once
    with pytest.raises(ca.CompareError, match="saved_variables"):
        ca.patch("print('not their train.py')\n")


def _rows(side: str, errors: list[float], seconds: list[float]) -> list[dict]:
    return [{"side": side, "variant": "glob", "seed": 1, "epoch": e, "train_error": 0.0, "test_error": err,
             "seconds": s} for e, (err, s) in enumerate(zip(errors, seconds), start=1)]


def test_the_summary_compares_the_last_epochs_and_times_an_epoch_by_its_median_and_fastest():
    theirs = [20.0 - e for e in range(ca.EPOCHS)]  # ... 12, 11
    ours = [x + 0.3 for x in theirs[:-1]] + [theirs[-1] + 0.6]
    slow = [100.0] * (ca.EPOCHS - 3) + [900.0, 95.0, float("nan")]  # one epoch slowed (a pause), one not timed
    (s,) = ca.summarise(_rows("authors", theirs, slow) + _rows("bioplaus", ours, [50.0] * ca.EPOCHS), ["glob"])
    assert s["d_last"] == pytest.approx(0.6)
    assert s["d_last3"] == pytest.approx((0.3 + 0.3 + 0.6) / 3)
    assert not s["ok"]  # 0.6 pp at the last epoch is outside the goal
    assert s["authors"]["seconds"] == 100.0 and s["authors"]["fastest"] == 95.0
    assert "100 (95)" in ca.markdown(_rows("authors", theirs, slow), [s], ["glob"], [1], "cmd", "src")
    (part,) = ca.summarise(_rows("authors", theirs[:4], slow[:4]) + _rows("bioplaus", ours, slow), ["glob"])
    assert part["common"] == 4 and part["d_common"] == pytest.approx(0.3)
    assert "not finished" in ca.markdown([], [part], ["glob"], [1], "cmd", "src")


def _args(**kw):
    import argparse

    base = {"side": "both", "variants": ["glob", "pred"], "seeds": [1, 2], "threads": 1, "jobs": 1}
    return argparse.Namespace(**{**base, **kw})


def test_the_runs_are_every_side_variant_and_seed_in_order(tmp_path):
    got = [(r.func.__name__, r.args[2].name, r.args[3] if r.func is ca.run_authors else None)
           for r in ca.runs(_args(), tmp_path, tmp_path / "authors")]
    assert got == [("run_authors", "glob", 1), ("run_authors", "glob", 2), ("run_ours", "glob", None),
                   ("run_authors", "pred", 1), ("run_authors", "pred", 2), ("run_ours", "pred", None)]
    assert all(r.func is ca.run_ours for r in ca.runs(_args(side="ours"), tmp_path, None))


def test_jobs_runs_side_by_side_and_a_failed_run_stops_none_of_the_others():
    import threading

    together = threading.Barrier(2, timeout=30)  # broken (an error) unless two runs wait at once
    ended = []

    def run(name, fail=False):
        together.wait()
        ended.append(name)
        if fail:
            raise ca.CompareError(f"{name} failed")

    with pytest.raises(ca.CompareError, match="a failed"):
        ca.run_all([lambda: run("a", fail=True), lambda: run("b"), lambda: run("c"), lambda: run("d")], jobs=2)
    assert sorted(ended) == ["a", "b", "c", "d"]
    order = []

    def step(i):
        order.append(i)
        if i == 1:
            raise ca.CompareError("1 failed")

    with pytest.raises(ca.CompareError, match="1 failed"):
        ca.run_all([lambda i=i: step(i) for i in range(5)], jobs=1)
    assert order == [0, 1, 2, 3, 4]  # one at a time, in order, and a failure stops none of the rest


@pytest.mark.parametrize("flags", [["--jobs", "0"], ["--threads", "0"]])
def test_a_count_below_one_is_refused_before_anything_runs(tmp_path, flags, capsys):
    assert ca.main(["--scratch", str(tmp_path / "s"), "--side", "ours", *flags]) == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def _their_train_py(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text("x = context.saved_variables\ny = torch.load(args.resume)\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("case", ["not their code", "no data", "not a source"])
def test_bad_input_to_the_preparation_ends_2_and_leaves_nothing(tmp_path, case, capsys):
    source = _their_train_py(tmp_path / "src")
    if case == "not their code":
        (source / "train.py").write_text("print('hello')\n", encoding="utf-8")
    authors = str(tmp_path / "nowhere" if case == "not a source" else source)
    scratch = tmp_path / "new" / "scratch"
    before = sorted(tmp_path.rglob("*"))
    argv = ["--scratch", str(scratch), "--side", "authors", "--authors", authors, "--data-dir", str(tmp_path / "none")]
    assert ca.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert sorted(tmp_path.rglob("*")) == before


def test_a_prepared_folder_gets_their_code_changed_and_the_data_laid_out(tmp_path, monkeypatch):
    data = {name: name.encode() * 3 for name in ca.IDX_FILES}
    for name, content in data.items():
        (tmp_path / f"{name}.gz").write_bytes(__import__("gzip").compress(content))
    monkeypatch.setattr(ca, "find_fashion_mnist", lambda _d: {n: tmp_path / f"{n}.gz" for n in ca.IDX_FILES})
    import argparse

    args = argparse.Namespace(authors=str(_their_train_py(tmp_path / "src")), data_dir=None)
    work = ca.prepare(args, tmp_path / "scratch")
    assert "saved_tensors" in (work / "train.py").read_text(encoding="utf-8")
    raw = work / "data" / "FashionMNIST" / "FashionMNIST" / "raw"
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == data  # no .part file left
    assert "sha256 of the original train.py" in (work / "SOURCE.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("python", ["/nonexistent/python", sys.executable])
def test_an_authors_python_without_torchvision_is_refused_before_anything_is_made(tmp_path, python, capsys):
    if python == sys.executable:
        import importlib.util

        if importlib.util.find_spec("torchvision") is not None:
            pytest.skip("this Python has torchvision")
    argv = ["--scratch", str(tmp_path / "s"), "--side", "authors", "--authors", str(_their_train_py(tmp_path / "src")),
            "--authors-python", python]
    assert ca.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --authors-python") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()
