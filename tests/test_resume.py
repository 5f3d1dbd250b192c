"""--resume: 2 epochs straight == 1 epoch + --resume 1 epoch, bit for bit on the CPU; a resumed or extended
run keeps the learning-rate schedule it logged."""

import os

import numpy as np

from bioplaus.checkpoint import checkpoint_path, load_checkpoint
from bioplaus.cli import main
from bioplaus.log import read_run

TINY = ["--variant", "predsim-bpf", "--num-layers", "2", "--num-hidden", "32", "--device", "cpu", "--no-progress",
        "--probe-every", "1", "--seed", "3",
        "--lr-decay-milestones"]  # a constant rate: a run extended by --resume keeps the schedule it was made with


def assert_same_run(a_path: str, b_path: str, ignore: tuple[str, ...] = ()) -> None:
    """Every logged number and every checkpoint array equal (timings excepted); the configurations too, but
    for the fields in ``ignore``."""
    a, b = read_run(a_path), read_run(b_path)
    same = {k: v for k, v in a.config.to_dict().items() if k not in ignore}
    assert same == {k: v for k, v in b.config.to_dict().items() if k not in ignore}
    assert a.status == b.status == "completed"
    assert set(a.epochs) == set(b.epochs) and set(a.layers) == set(b.layers)
    for key in a.epochs:
        if key != "seconds":
            np.testing.assert_array_equal(a.epochs[key], b.epochs[key], err_msg=key)
    for name in a.layers:
        assert set(a.layers[name]) == set(b.layers[name])
        for key in a.layers[name]:
            np.testing.assert_array_equal(a.layers[name][key], b.layers[name][key], err_msg=f"{name}/{key}")
    np.testing.assert_array_equal(a.probe.get("epochs"), b.probe.get("epochs"))
    for name, sims in a.probe.get("similarity", {}).items():
        np.testing.assert_array_equal(sims, b.probe["similarity"][name], err_msg=name)
    sa, ma = load_checkpoint(checkpoint_path(a_path))
    sb, mb = load_checkpoint(checkpoint_path(b_path))
    assert ma["epoch"] == mb["epoch"] == a.num_epochs
    assert set(sa) == set(sb)
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


def test_resume_is_bit_identical(tmp_path, capsys):
    straight = str(tmp_path / "straight.h5")
    split = str(tmp_path / "split.h5")
    assert main([*TINY, "--epochs", "2", "--out", straight]) == 0
    assert main([*TINY, "--epochs", "1", "--out", split]) == 0
    first = read_run(split)
    assert first.status == "completed" and first.num_epochs == 1
    assert main(["--resume", split, "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 1" in out and "epoch 2/2" in out
    resumed = read_run(split)
    assert resumed.attrs["epochs_planned"] == 2 and resumed.config.epochs == 2
    assert_same_run(straight, split)
    # the straight run really trained: weights moved and its error is below chance
    assert read_run(straight).epochs["test_error"][-1] < 90
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
