"""``--conv-algorithm``: how 3x3 convolutions are computed, a setting of the run like any other.

On the CPU "auto" is im2col (bit for bit: the numbers every earlier CPU run holds); "winograd" trains
the same network to float32 rounding, not bit for bit (another summation); the run log records the
setting, a resume keeps it (another value is refused), and any split into stages trains with it
bit-identically to one stage.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from test_cli import assert_refused
from test_stage import CONV, assert_same_state, config, train

from bioplaus.cli import main
from bioplaus.data import load_dataset
from bioplaus.log import read_run


@pytest.fixture(scope="module")
def data():
    """128 training images (2 batches of 64) and 64 test images of the embedded set."""
    ds = load_dataset("fashion-mnist-mini")
    return dataclasses.replace(ds, x_train=ds.x_train[:128], y_train=ds.y_train[:128],
                               x_test=ds.x_test[:64], y_test=ds.y_test[:64])


def test_auto_is_im2col_on_the_cpu_and_winograd_is_close(data):
    runs = {algorithm: train(config("predsim", CONV, conv_algorithm=algorithm), data, None, epochs=1)
            for algorithm in ("auto", "im2col", "winograd")}
    (auto, auto_results, auto_eval), (im2col, im2col_results, im2col_eval) = runs["auto"], runs["im2col"]
    assert auto_results == im2col_results and auto_eval == im2col_eval
    assert_same_state(auto.state_dict(), im2col.state_dict())
    wino, wino_results, wino_eval = runs["winograd"]
    ref = im2col.state_dict()
    differs = [k for k in ref if not np.array_equal(wino.state_dict()[k], ref[k])]
    assert any(k.endswith("/W") and "conv" in k for k in differs), differs  # the convs really ran otherwise
    # two steps from the same start: every logged loss the same to float32 rounding (a weight may differ
    # by up to Adam's step, lr, where a gradient near zero changes sign: compared through the losses)
    for (name, got), (_, want) in zip(_losses(wino_results[0]), _losses(im2col_results[0])):
        assert abs(got - want) <= 1e-3 * max(1.0, abs(want)), name
    assert abs(wino_eval["test_loss"] - im2col_eval["test_loss"]) <= 1e-3 * im2col_eval["test_loss"]


def _losses(result: dict) -> list:
    """Every loss in an epoch's result, as (name, value), in a fixed order."""
    out = [("train_loss", result["train_loss"])]
    for block, stats in sorted(result["layers"].items()):
        out += [(f"{block}/{k}", v) for k, v in sorted(stats.items()) if k.startswith("loss")]
    return out


@pytest.mark.parametrize("split", [[2, 3], [1, 1, 1, 1, 1]])
def test_winograd_splits_train_bit_identically(split, data):
    cfg = config("predsim-bpf", CONV, conv_algorithm="winograd")
    one, one_results, one_eval = train(cfg, data, None, epochs=1)
    parts, results, ev = train(cfg, data, split, epochs=1)
    assert results == one_results and ev == one_eval
    assert_same_state(parts.state_dict(), one.state_dict())


VGG_TINY = ["--variant", "predsim", "--model", "vgg6b", "--feat-mult", "0.0625", "--num-layers", "1",
            "--num-hidden", "16", "--dim-in-decoder", "256", "--device", "cpu", "--no-progress", "--epochs", "1"]


@pytest.mark.slow
def test_the_log_records_it_and_a_resume_keeps_it(tmp_path, capsys):
    path = str(tmp_path / "wino.h5")
    assert main([*VGG_TINY, "--conv-algorithm", "winograd", "--out", path]) == 0
    assert read_run(path).config.conv_algorithm == "winograd"
    capsys.readouterr()
    assert_refused(["--resume", path, "--epochs", "2", "--conv-algorithm", "im2col", "--no-progress"], str(tmp_path),
                   capsys, "--conv-algorithm differs")
    assert main(["--resume", path, "--epochs", "2", "--no-progress"]) == 0
    resumed = read_run(path)
    assert resumed.config.conv_algorithm == "winograd" and resumed.num_epochs == 2
    assert sorted(os.listdir(tmp_path)) == sorted(["wino.h5", "wino.h5.ckpt.npz", "wino.h5.lock"])


def test_results_table_keeps_the_algorithms_apart(tmp_path):
    """A sweep over --conv-algorithm compares them: one row each, named by it (not one setting over seeds,
    as runs that differ only in --device are)."""
    from test_analysis import make_log

    from bioplaus import analysis

    recipe = {"variant": "predsim", "model": "vgg8b", "dataset": "cifar10"}
    for algorithm in ("im2col", "winograd"):
        make_log(tmp_path / f"{algorithm}.h5", n_epochs=2, blocks=("conv1", "conv2", "fc1"), conv_algorithm=algorithm,
                 **{k: v for k, v in recipe.items() if k != "variant"})
    rows = analysis.results_table(str(tmp_path))
    assert sorted(r["label"].split(" (")[1] for r in rows) == ["conv_algorithm=im2col)", "conv_algorithm=winograd)"]
    assert [r["runs"] for r in rows] == [1, 1]
