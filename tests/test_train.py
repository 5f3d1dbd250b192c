"""The trainer's pieces: stage bounds, the whole-network view over stages, the epoch and evaluation
records built from a pass's sums, and divergence.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bioplaus.backend import NUMPY
from bioplaus.config import Config
from bioplaus.heads import PredHead, SimHead
from bioplaus.kinds import DENSE
from bioplaus.models import BlockSpec, NetSpec
from bioplaus.probes import MEAN, Probe
from bioplaus.rules import get_rule, init_blocks
from bioplaus.train import (
    Diverged,
    check_finite,
    epoch_result,
    eval_result,
    split_bounds,
    values_to_host,
    whole_network,
)

NAMES = ["fc1", "fc2"]
BLOCK = DENSE.probes(BlockSpec("fc1", "dense", 6, 6))  # weight_norm, update_norm
SERIES = {"fc1": (*BLOCK, *PredHead(feedback=True).probes(), *SimHead(learned=False).probes()),
          "fc2": (*BLOCK, *SimHead(learned=False).probes()), "out": ()}  # what a predsim-bpf run declares


# ------------------------------------------------------------------------------ split_bounds
@pytest.mark.parametrize("sizes,bounds", [
    (None, [(0, 5)]),
    ([], [(0, 5)]),
    ([5], [(0, 5)]),
    ([1, 4], [(0, 1), (1, 5)]),
    ([2, 2, 1], [(0, 2), (2, 4), (4, 5)]),
    ([1, 1, 1, 1, 1], [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),
])
def test_split_bounds(sizes, bounds):
    assert split_bounds(5, sizes) == bounds


@pytest.mark.parametrize("sizes", [[2, 2], [3, 3], [5, 0], [6, -1], [0, 5]])
def test_split_bounds_refuses_what_does_not_split_the_network(sizes):
    with pytest.raises(ValueError, match="do not split a network of 5 blocks"):
        split_bounds(5, sizes)


# ------------------------------------------------------------------------------ whole_network
def test_whole_network_views_the_stages_arrays():
    blocks = tuple(BlockSpec(f"fc{i + 1}", "dense", 6, 6, dec_features=6) for i in range(3))
    spec = NetSpec("mlp", (1, 2, 3), 4, blocks, 6, True)
    rule = get_rule("predsim-bpf")
    nets = [init_blocks(spec, rule, 1, 5, 0.01, NUMPY, np.float64, a, b) for a, b in ((0, 1), (1, 3))]
    assert nets[0].out is None and nets[1].out is not None
    whole = whole_network(nets)
    assert whole.first == 0 and whole.names == ["fc1", "fc2", "fc3"]
    assert whole.out is nets[1].out and whole.slope == 0.01 and whole.num_classes == 4
    pairs = [(0, 0), (1, 0), (1, 1)]  # (stage, index in the stage) of each block
    for i, (s, j) in enumerate(pairs):  # shared, not copied: an update through the view reaches the stage
        assert whole.blocks[i] is nets[s].blocks[j]
    whole.blocks[2].params["W"][0, 0] = 123.0
    assert nets[1].blocks[1].params["W"][0, 0] == 123.0
    assert whole_network(nets[:1]) is nets[0]  # one stage is its own view
    one = init_blocks(spec, rule, 1, 5, 0.01, NUMPY, np.float64)  # the same seed, unsplit: the same arrays
    for i in range(3):
        for group in ("params", "fixed", "running"):
            for k, v in getattr(one.blocks[i], group).items():
                if (i, k) != (2, "W"):
                    assert np.array_equal(v, getattr(whole.blocks[i], group)[k]), (i, group, k)


# ------------------------------------------------------------------------------ records
def host_sums(total=200):
    return {"loss": 0.5 * total, "correct": 150.0,
            ("fc1", "loss_pred"): 2.0 * total, ("fc1", "loss_sim"): 0.1 * total, ("fc1", "correct_pred"): 50.0,
            ("fc1", "weight_norm"): 3.5, ("fc1", "update_norm"): 0.25, ("fc1", "fa_angle"): 80.0,
            ("fc2", "weight_norm"): 1.5}


def test_epoch_result():
    r = epoch_result(3, 1e-3, {**host_sums(), ("fc1", "undeclared"): 1.0}, 200, 4.5, SERIES)
    assert r["epoch"] == 3 and r["lr"] == 1e-3 and r["seconds"] == 4.5
    assert r["train_loss"] == 0.5 and r["train_error"] == 25.0  # 150 of 200 right
    fc1 = r["layers"]["fc1"]
    assert fc1["loss_pred"] == 2.0 and fc1["loss_sim"] == pytest.approx(0.1)  # sums of batch means × n, over n
    assert fc1["error_pred"] == 75.0  # 50 of 200 right
    assert (fc1["weight_norm"], fc1["update_norm"], fc1["fa_angle"]) == (3.5, 0.25, 80.0)  # taken as they are
    assert r["layers"]["fc2"] == {"weight_norm": 1.5}  # only what was measured
    assert set(r["layers"]) == {"fc1", "fc2", "out"} and "undeclared" not in fc1  # only what is declared


def test_eval_result():
    r = eval_result({"loss": 46.0, "correct": 90.0, ("fc2", "loss_sim"): 10.0, ("fc2", "weight_norm"): 2.0}, 100,
                    SERIES)
    assert r["test_loss"] == 0.46 and r["test_error"] == pytest.approx(10.0)
    assert r["layers"]["fc1"] == {} and r["layers"]["fc2"] == {"loss_sim": 0.1}  # per-batch statistics only
    assert "train_loss" not in r and "epoch" not in r


def test_values_to_host():
    values = {"loss": np.asarray(np.float32(1.5)), ("fc1", "correct_pred"): np.asarray(7), "n": 3}
    got = values_to_host(NUMPY, values)
    assert got == {"loss": 1.5, ("fc1", "correct_pred"): 7.0, "n": 3.0}
    assert all(type(v) is float for v in got.values())
    assert values_to_host(NUMPY, {}) == {}


# ------------------------------------------------------------------------------ divergence
def test_check_finite_passes_finite_results():
    check_finite(epoch_result(1, 1e-3, host_sums(), 200, 1.0, SERIES), SERIES)


@pytest.mark.parametrize("key,bad,layer", [
    (("fc1", "loss_sim"), math.nan, "fc1 local sim"),
    (("fc1", "loss_pred"), math.inf, "fc1 local pred"),
    ("loss", math.nan, "output"),
    ("loss", -math.inf, "output"),
])
def test_check_finite_names_the_epoch_and_the_layer(key, bad, layer):
    sums = host_sums()
    sums[key] = bad
    result = epoch_result(4, 1e-3, sums, 200, 1.0, SERIES)
    with pytest.raises(Diverged) as info:
        check_finite(result, SERIES)
    e = info.value
    assert (e.epoch, e.layer) == (4, layer)
    assert math.isnan(e.value) if math.isnan(bad) else e.value == bad
    assert str(e) == f"training diverged in epoch 4: the {layer} loss became {e.value}"
    assert isinstance(e, RuntimeError)


def test_a_local_loss_is_checked_before_the_output():
    sums = host_sums()
    sums["loss"] = math.nan
    sums[("fc1", "loss_sim")] = math.inf
    with pytest.raises(Diverged, match="fc1 local sim"):
        check_finite(epoch_result(2, 1e-3, sums, 200, 1.0, SERIES), SERIES)


def test_every_declared_loss_is_checked_and_nothing_else():
    """A loss declared by any unit is checked; a statistic that is not a loss (a norm) may be anything."""
    series = {**SERIES, "fc2": (*SERIES["fc2"], Probe("loss_mine", "1", "a head's own loss", MEAN, loss=True))}
    sums = {**host_sums(), ("fc2", "weight_norm"): math.inf}
    check_finite(epoch_result(2, 1e-3, sums, 200, 1.0, series), series)  # an infinite norm is no divergence
    with pytest.raises(Diverged, match="the fc2 local mine loss became nan"):
        check_finite(epoch_result(2, 1e-3, {**sums, ("fc2", "loss_mine"): math.nan}, 200, 1.0, series), series)


def test_the_trainer_describes_its_network():
    """The default mlp: 3 dense blocks and the output layer; the count includes batch norm."""
    from bioplaus.data import load_dataset
    from bioplaus.train import Trainer

    trainer = Trainer(Config(num_hidden=16).resolve(), NUMPY, load_dataset("fashion-mnist-mini"))
    assert trainer.layer_names == ["fc1", "fc2", "fc3", "out"]
    assert trainer.num_parameters == 784 * 16 + 16 + 2 * 16 + 2 * (16 * 16 + 16 + 2 * 16) + 16 * 10 + 10
    assert trainer.describe().splitlines()[-1] == f"parameters: {trainer.num_parameters}"
