"""sims/run.py on bad input: exit 2, one sentence on stderr starting 'error: ', nothing written."""

import hashlib
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from helpers import block_series

from bioplaus.cli import main
from bioplaus.config import Config
from bioplaus.log import RunLog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "sims", "run.py")
TINY = ["--num-layers", "1", "--num-hidden", "32", "--epochs", "2", "--device", "cpu", "--no-progress"]


def listing(root) -> dict[str, str]:
    """Every file and folder under root (root included), with a hash of each regular file's bytes (and the
    kind of anything else), and each folder's modification time: a folder in which a file was made and
    removed again (a probe) has changed too."""
    out = {"./": str(os.stat(root).st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = str(os.lstat(os.path.join(dirpath, d)).st_mtime_ns)
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
            else:  # a FIFO, a device, a link: its kind and target (never opened: a FIFO would block)
                target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
                out[os.path.relpath(p, root)] = f"{stat.S_IFMT(st.st_mode)}:{st.st_rdev}:{target}"
    return out


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory with an empty data folder and HOME (nothing to find, nothing to leak)."""
    home = tmp_path / "home"
    data = tmp_path / "nodata"
    cwd = tmp_path / "cwd"
    for d in (home, data, cwd):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BIOPLAUS_DATA", str(data))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.chdir(cwd)
    return tmp_path


def make_log(path, status="running", epochs_done=0, epochs=2) -> Config:
    cfg = Config(variant="predsim", num_layers=1, num_hidden=32, epochs=epochs, device="cpu").resolve()
    log = RunLog.create(str(path), cfg, "cpu (test)", 100)
    for e in range(1, epochs_done + 1):
        log.append_epoch({"epoch": e, "lr": 5e-4, "train_loss": 1.0, "train_error": 50.0, "seconds": 1.0,
                          "layers": {}}, {"test_loss": 1.0, "test_error": 50.0, "layers": {}})
    log.set_status(status, "" if status != "diverged" else "the loss of fc1 became NaN in epoch 1")
    return cfg


def assert_refused(argv, root, capsys, match=None):
    before = listing(root)
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, (argv, captured.err)
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert lines[0].rstrip().endswith((".", "?")), lines[0]
    assert captured.out == ""
    if match:
        assert match in lines[0], lines[0]
    assert listing(root) == before, "a refused run wrote something"


BAD_FLAGS = [
    (["--frobnicate"], "unrecognized arguments"),
    (["--variant"], "expected one argument"),
    (["--epochs", "many"], "invalid int value"),
    (["--variant", "backprop"], "unknown variant"),
    (["--variant", "pred", "--model", "vgg99"], "unknown model"),
    (["--variant", "pred", "--dataset", "imagenet"], "imagenet"),
    (["--recipe", "cifar10-vgg8-predsim"], "did you mean cifar10-vgg8b-predsim"),
    (["--variant", "pred", "--feat-mult", "2"], "--feat-mult"),
    (["--variant", "pred", "--dropout", "1.5"], "--dropout"),
    (["--variant", "pred", "--epochs", "0"], "--epochs"),
    (["--variant", "pred", "--lr-decay-milestones", "8", "5"], "increasing"),
    (["--variant", "pred", "--nonlin", "tanh"], "nonlinearity"),
    (["--variant", "pred", "--overwrite"], "--overwrite needs --out"),
]


@pytest.mark.parametrize("argv,match", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags(argv, match, work, capsys):
    assert_refused(argv + ["--no-progress"], work, capsys, match)


def test_existing_out_is_never_overwritten(work, capsys):
    out = work / "cwd" / "mine.h5"
    out.write_bytes(b"earlier results")
    assert_refused(["--variant", "pred", *TINY, "--out", str(out)], work, capsys, "--overwrite")
    assert out.read_bytes() == b"earlier results"


def test_unwritable_out_is_refused_before_training(work, capsys):
    blocker = work / "cwd" / "afile"
    blocker.write_text("x")
    assert_refused(["--variant", "pred", *TINY, "--out", str(blocker / "sub" / "run.h5")], work, capsys,
                   "not a folder")
    assert_refused(["--variant", "pred", *TINY, "--out", str(work / "cwd")], work, capsys, "must end in .h5")


def test_missing_data_is_one_sentence(work, capsys, monkeypatch):
    # Offline for sure: the download is pointed at a mirror that does not exist.
    monkeypatch.setenv("BIOPLAUS_DATA_MIRROR", "file://" + str(work / "no-mirror"))
    # Only the run's own outputs are checked here; the data layer may prepare its download cache.
    assert_refused(["--variant", "pred", *TINY, "--dataset", "cifar10", "--data-dir", str(work / "nodata")],
                   work / "cwd", capsys, "cifar10")
    assert os.listdir(work / "nodata") == []


def test_gpu_without_gpu(work, capsys):
    from bioplaus.backend import gpu_available

    if gpu_available():
        pytest.skip("this machine has a GPU")
    assert_refused(["--variant", "pred", *TINY[:-3], "--device", "gpu", "--no-progress"], work, capsys, "gpu")


def test_resume_refusals(work, capsys):
    logs = work / "logs"
    logs.mkdir()
    assert_refused(["--resume", str(logs / "missing.h5")], work, capsys, "no run log")
    corrupt = logs / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    assert_refused(["--resume", str(corrupt)], work, capsys, "cannot resume")

    running = logs / "running.h5"
    make_log(running, "interrupted", epochs_done=1)
    assert_refused(["--resume", str(running), "--lr", "0.1"], work, capsys, "--lr differs")
    assert_refused(["--resume", str(running), "--variant", "sim"], work, capsys, "--variant differs")
    assert_refused(["--resume", str(running), "--epochs", "1"], work, capsys, "smaller")
    assert_refused(["--resume", str(running), "--out", str(logs / "x.h5")], work, capsys, "--out cannot")
    assert_refused(["--resume", str(running), "--recipe", "mnist-mlp-glob"], work, capsys, "--recipe cannot")
    # the log has one epoch but no checkpoint of epoch 0 or 1 can explain two
    two = logs / "two.h5"
    make_log(two, "interrupted", epochs_done=2, epochs=4)
    assert_refused(["--resume", str(two)], work, capsys, "checkpoint")
    bad_ckpt = logs / "badckpt.h5"
    make_log(bad_ckpt, "interrupted", epochs_done=1)
    (logs / "badckpt.h5.ckpt.npz").write_bytes(b"garbage")
    assert_refused(["--resume", str(bad_ckpt)], work, capsys, "damaged")

    done = logs / "done.h5"
    make_log(done, "completed", epochs_done=2, epochs=2)
    assert_refused(["--resume", str(done)], work, capsys, "larger --epochs")
    assert_refused(["--resume", str(done), "--epochs", "2"], work, capsys, "larger --epochs")
    diverged = logs / "diverged.h5"
    make_log(diverged, "diverged", epochs_done=1)
    assert_refused(["--resume", str(diverged)], work, capsys, "diverge")


def test_describe_reads_no_data(work):
    """--describe prints the model and 'parameters: N' with no dataset anywhere."""
    env = dict(os.environ)
    before = listing(work)
    for argv, millions in ((["--variant", "predsim"], 2.9),
                           (["--recipe", "cifar10-vgg11b-3x-predsim-cutout"], 91.3)):
        proc = subprocess.run(check=False, args=[sys.executable, RUN, *argv, "--describe"], capture_output=True, text=True, env=env,
                              cwd=str(work / "cwd"), timeout=120)
        assert proc.returncode == 0, proc.stderr
        last = proc.stdout.strip().splitlines()[-1]
        assert last.startswith("parameters: ")
        assert round(int(last.split()[1]) / 1e6, 1) == millions
    assert listing(work) == before


def test_subprocess_usage_error_is_one_line(work):
    before = listing(work)
    proc = subprocess.run(check=False, args=[sys.executable, RUN, "--variant", "predsim", "--bogus", "3"], capture_output=True,
                          text=True, cwd=str(work / "cwd"), timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ")
    assert listing(work) == before


def test_help_and_list_recipes(capsys):
    assert main(["--list-recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 96 and out[0].startswith("mnist-mlp-glob")
    assert main(["--help"]) == 0
    assert "--resume" in capsys.readouterr().out


def test_default_out_names_never_collide(work):
    from bioplaus.runner import default_out

    cfg = Config(variant="predsim-bpf").resolve()
    first = default_out(cfg)
    assert first.startswith(os.path.join("runs", "predsim-bpf-mlp-fashion-mnist-mini-")) and first.endswith(".h5")
    os.makedirs("runs")
    open(first, "wb").close()
    second = default_out(cfg)
    assert second != first  # same second: "-2" is appended; a later second: a new stamp
    assert not os.path.exists(second)
    np.testing.assert_equal(sorted(os.listdir("runs")), [os.path.basename(first)])


class FakeTrainer:
    """Stands in for bioplaus.train.Trainer: fixed numbers, optional divergence at one epoch."""

    layer_names = ("fc1", "out")
    num_parameters = 42

    def __init__(self, diverge_at=None):
        self.series = {"fc1": block_series()}
        self.epoch = 0
        self.diverge_at = diverge_at

    def train_epoch(self, on_batch=None):
        from bioplaus.train import Diverged

        e = self.epoch + 1
        for done in (100, 200, 250):
            if on_batch is not None:
                on_batch(done, 250)
        if e == self.diverge_at:
            raise Diverged(e, "fc1", float("nan"))
        self.epoch = e
        return {"epoch": e, "lr": 5e-4, "train_loss": 1.0 / e, "train_error": 50.0 / e, "seconds": 0.25,
                "layers": {"fc1": {"loss_pred": 1.0, "loss_sim": 0.5, "error_pred": 30.0 / e, "weight_norm": 2.0,
                                   "update_norm": 0.1, "fa_angle": float("nan")}}}

    def evaluate(self):
        return {"test_loss": 0.9, "test_error": 40.0 / self.epoch,
                "layers": {"fc1": {"loss_pred": 1.1, "loss_sim": 0.6, "error_pred": 35.0 / self.epoch}}}

    def probe(self):
        raise AssertionError("no probe without --probe-every")

    def state_dict(self):
        return {"fc1.W": np.full((2, 2), float(self.epoch), np.float32), "epoch": np.array(self.epoch)}


@pytest.mark.parametrize("diverge_at", [None, 2])
def test_training_loop_output_and_divergence(work, capsys, monkeypatch, diverge_at):
    from bioplaus import runner
    from bioplaus.checkpoint import load_checkpoint
    from bioplaus.log import read_run

    monkeypatch.setattr(runner, "load_data", lambda cfg, progress=False: None)
    monkeypatch.setattr(runner, "make_trainer", lambda cfg, backend, data, stages=None, factory=None: FakeTrainer(diverge_at))
    rc = main(["--variant", "pred", "--epochs", "3", "--device", "cpu", "--out", "o/run.h5"])
    captured = capsys.readouterr()
    run = read_run("o/run.h5")
    lines = captured.out.splitlines()
    assert "epoch 1/3  train 50.00%  test 40.00%  local: fc1 35.0%  lr 5.0e-04  0.2s" in lines
    assert "samples/s" in captured.err or "sample/s" in captured.err  # the progress bar ran
    if diverge_at is None:
        assert rc == 0 and run.status == "completed" and run.num_epochs == 3
        assert any(line.startswith("done: 3 epochs; log: o/run.h5") for line in lines)
        np.testing.assert_array_equal(run.layers["fc1"]["test_error_pred"], [35.0, 17.5, 35.0 / 3])
        assert load_checkpoint("o/run.h5.ckpt.npz")[1]["epoch"] == 3
    else:
        assert rc == 1 and run.status == "diverged" and run.num_epochs == 1
        assert run.attrs["message"] == "training diverged in epoch 2: the fc1 loss became nan"
        assert "diverged" in captured.err and "epoch 2" in captured.err
        assert load_checkpoint("o/run.h5.ckpt.npz")[1]["epoch"] == 1
        assert main(["--resume", "o/run.h5"]) == 2  # a diverged run is not resumed as is
