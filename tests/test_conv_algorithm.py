"""``--conv-algorithm``: how 3x3 convolutions are computed, a setting of the run like any other.

"auto" on the CPU is the CPU's rule (Winograd where it measured faster, im2col elsewhere); "winograd" and
the rule train the same network as im2col to float32 rounding, not bit for bit (another summation). A
run records what "auto" resolved to when it started, a resume keeps it (another value is refused), a
log written before runs resolved "auto" (it meant im2col on the CPU) resumes with im2col, bit for bit,
and any split into stages trains with the recorded algorithm bit-identically to one stage.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from test_checkpoint import _run, golden_copy
from test_cli import assert_refused
from test_resume import assert_same_run
from test_stage import CONV, assert_same_state, config, train

from bioplaus import runner
from bioplaus.checkpoint import load_checkpoint
from bioplaus.cli import main
from bioplaus.config import Config, logged_config
from bioplaus.data import load_dataset
from bioplaus.kinds.conv import CONV as CONV_KIND
from bioplaus.log import read_run
from bioplaus.ops import conv
from bioplaus.sweep import runs as sweep_runs


@pytest.fixture(scope="module")
def data():
    """128 training images (2 batches of 64) and 64 test images of the embedded set."""
    ds = load_dataset("fashion-mnist-mini")
    return dataclasses.replace(ds, x_train=ds.x_train[:128], y_train=ds.y_train[:128],
                               x_test=ds.x_test[:64], y_test=ds.y_test[:64])


def test_auto_is_the_cpu_rule_on_the_cpu_and_close_to_im2col(data):
    cpu_rule = conv.AUTO["cpu"]
    runs = {algorithm: train(config("predsim", CONV, conv_algorithm=algorithm), data, None, epochs=1)
            for algorithm in ("auto", cpu_rule, "im2col", "winograd")}
    (auto, auto_results, auto_eval), (rule, rule_results, rule_eval) = runs["auto"], runs[cpu_rule]
    assert auto_results == rule_results and auto_eval == rule_eval
    assert_same_state(auto.state_dict(), rule.state_dict())
    ref = runs["im2col"][0].state_dict()
    im2col_results, im2col_eval = runs["im2col"][1:]
    for name in (cpu_rule, "winograd"):
        other, results, ev = runs[name]
        differs = [k for k in ref if not np.array_equal(other.state_dict()[k], ref[k])]
        assert any(k.endswith("/W") and "conv" in k for k in differs), differs  # the convs really ran otherwise
        # two steps from the same start: every logged loss the same to float32 rounding (a weight may differ
        # by up to Adam's step, lr, where a gradient near zero changes sign: compared through the losses)
        for (key, got), (_, want) in zip(_losses(results[0]), _losses(im2col_results[0])):
            assert abs(got - want) <= 1e-3 * max(1.0, abs(want)), (name, key)
        assert abs(ev["test_loss"] - im2col_eval["test_loss"]) <= 1e-3 * im2col_eval["test_loss"]


def _losses(result: dict) -> list:
    """Every loss in an epoch's result, as (name, value), in a fixed order."""
    out = [("train_loss", result["train_loss"])]
    for block, stats in sorted(result["layers"].items()):
        out += [(f"{block}/{k}", v) for k, v in sorted(stats.items()) if k.startswith("loss")]
    return out


@pytest.mark.parametrize("algorithm,chunked", [("winograd", False), ("auto", False), ("auto", True)])
@pytest.mark.parametrize("split", [[2, 3], [1, 1, 1, 1, 1]])
def test_winograd_splits_train_bit_identically(split, algorithm, chunked, data, monkeypatch):
    if chunked:  # Winograd in chunks of one sample
        monkeypatch.setattr(conv, "WINOGRAD_MAX_BYTES", 1)
        monkeypatch.setattr(conv, "WINOGRAD_MIN_TILES", 1)
    cfg = config("predsim-bpf", CONV, conv_algorithm=algorithm)
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


def test_a_new_run_records_what_auto_resolved_to(tmp_path):
    """"auto" is resolved on the run's device when it starts: the log and the trainer hold the CPU's rule."""
    flags = {"variant": "predsim", "model": "vgg6b", "feat_mult": 0.0625, "num_hidden": 16, "dim_in_decoder": 256,
             "device": "cpu"}
    for asked, recorded in (("auto", conv.AUTO["cpu"]), ("im2col", "im2col"), ("winograd", "winograd")):
        prepared = runner.prepare(runner.config_from({**flags, "conv_algorithm": asked}), str(tmp_path / "run.h5"))
        assert prepared.cfg.conv_algorithm == recorded
        assert {s.conv_algorithm for s in prepared.trainer.spec.blocks if s.kind is CONV_KIND} == {recorded}
    assert os.listdir(tmp_path) == []  # prepared, nothing written


def test_a_logged_configuration_reads_as_it_ran():
    """Logs written before runs recorded what "auto" resolved to: "auto" was im2col on the CPU and
    Winograd on a GPU; no setting at all was im2col everywhere."""
    base = Config(model="vgg6b").to_dict()
    missing = {k: v for k, v in base.items() if k != "conv_algorithm"}
    assert logged_config(missing, "gpu (NVIDIA H200)").conv_algorithm == "im2col"
    assert logged_config({**base, "conv_algorithm": "auto"}, "cpu (x86_64)").conv_algorithm == "im2col"
    assert logged_config({**base, "conv_algorithm": "auto"}, None).conv_algorithm == "im2col"
    assert logged_config({**base, "conv_algorithm": "auto"}, "gpu (NVIDIA H200)").conv_algorithm == "winograd"
    for name in ("im2col", "winograd", conv.AUTO["cpu"]):
        assert logged_config({**base, "conv_algorithm": name}, "gpu (NVIDIA H200)").conv_algorithm == name


def test_an_old_checkpoint_matches_the_log_it_was_resumed_into():
    """A resume rewrites the log's configuration before its first checkpoint: an old checkpoint's "auto"
    matches the log's im2col (or winograd) then, and nothing else."""
    logged = Config(model="vgg6b", conv_algorithm="im2col")
    meta = {"config": json.dumps({**logged.to_dict(), "conv_algorithm": "auto"})}
    runner._check_checkpoint_config(meta, logged, "x.ckpt.npz", "cpu (x86_64)")
    runner._check_checkpoint_config(meta, logged.replace(conv_algorithm="winograd"), "x.ckpt.npz", "cpu")
    with pytest.raises(runner.BadInput, match="belongs to another run"):
        runner._check_checkpoint_config(meta, logged.replace(conv_algorithm=conv.AUTO["cpu"]), "x.ckpt.npz", "cpu")
    with pytest.raises(runner.BadInput, match="belongs to another run"):
        meta = {"config": json.dumps(logged.replace(conv_algorithm="winograd").to_dict())}
        runner._check_checkpoint_config(meta, logged, "x.ckpt.npz", "cpu")


def test_a_sweep_asking_for_auto_accepts_what_the_log_recorded():
    want = Config(model="vgg6b")  # "auto"
    for logged in ("im2col", "winograd", conv.AUTO["cpu"]):
        assert sweep_runs._config_difference(want.replace(conv_algorithm=logged), want) is None
    assert "conv_algorithm" in sweep_runs._config_difference(want.replace(conv_algorithm="im2col"),
                                                             want.replace(conv_algorithm="winograd"))


@pytest.mark.slow
def test_an_old_log_that_says_auto_resumes_with_im2col(tmp_path):
    """``golden/auto-cpu-conv-run.h5*``: one epoch of a conv net written by bioplaus 203005b (before runs
    recorded what "auto" resolved to; it computed by im2col on the CPU) with the pinned arithmetic of
    ``helpers.PINNED_ENV``::

        python sims/run.py --variant predsim --model vgg6b --feat-mult 0.0625 --num-hidden 32 --epochs 1 \
            --nonlin leakyrelu --dim-in-decoder 256 --dropout 0.1 --seed 7 --device cpu --no-progress \
            --out auto-cpu-conv-run.h5

    Resumed to 2 epochs, it equals, bit for bit, a run made with ``--conv-algorithm im2col`` from the
    start, and its log now says im2col."""
    old = golden_copy("auto-cpu-conv-run.h5", tmp_path)
    assert json.loads(load_checkpoint(str(old) + ".ckpt.npz")[1]["config"])["conv_algorithm"] == "auto"
    assert read_run(str(old)).config.conv_algorithm == "im2col"
    _run("--resume", str(old), "--epochs", "2", "--no-progress")
    straight = tmp_path / "straight.h5"
    # the old log keeps its schedule, (5, 8): no decay within 2 epochs; a new run of 2 epochs cannot be given
    # those milestones, so it runs at a constant rate (the logged lr series are compared all the same)
    _run("--variant", "predsim", "--model", "vgg6b", "--feat-mult", "0.0625", "--num-hidden", "32", "--epochs", "2",
         "--nonlin", "leakyrelu", "--dim-in-decoder", "256", "--dropout", "0.1", "--seed", "7", "--device", "cpu",
         "--no-progress", "--conv-algorithm", "im2col", "--lr-decay-milestones", "--out", str(straight))
    assert_same_run(str(straight), str(old), ignore=("lr_decay_milestones",))
    assert read_run(str(old)).config.conv_algorithm == "im2col"


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
