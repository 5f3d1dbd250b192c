"""Stages: any split of a network into stages trains bit-identically to one stage under a local rule; a
global rule refuses a partial stage; a stage's state is keyed by block name and round-trips, and a
whole network's checkpoint loads into any split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bioplaus.backend import NUMPY
from bioplaus.config import Config
from bioplaus.data import load_dataset
from bioplaus.models import build_spec
from bioplaus.stage import Stage
from bioplaus.train import Trainer

MLP = {"model": "mlp", "num_layers": 3, "num_hidden": 32}
CONV = {"model": "vgg6b", "feat_mult": 0.0625, "num_layers": 1, "num_hidden": 32, "dim_in_decoder": 256,
        "nonlin": "leakyrelu"}  # 4 conv blocks (pool after each) and 1 dense block
COMMON = {"batch_size": 64, "epochs": 2, "dropout": 0.1, "lr_decay_milestones": (1,), "seed": 3}


@pytest.fixture(scope="module")
def data():
    """192 training images (3 batches of 64) and 128 test images of the embedded set."""
    ds = load_dataset("fashion-mnist-mini")
    return dataclasses.replace(ds, x_train=ds.x_train[:192], y_train=ds.y_train[:192],
                               x_test=ds.x_test[:128], y_test=ds.y_test[:128])


def config(variant: str, net: dict, **changes) -> Config:
    return Config(variant=variant, **net, **COMMON).replace(**changes).resolve()


def without_seconds(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


def assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        assert v.dtype == b[k].dtype and np.array_equal(v, b[k]), k


def snapshot(state: dict) -> dict:
    """A copy: on the CPU a state dict holds the live arrays themselves, which training changes in place."""
    return {k: v.copy() for k, v in state.items()}


def train(cfg, data, stages, epochs=2):
    trainer = Trainer(cfg, NUMPY, data, stages=stages)
    results = [without_seconds(trainer.train_epoch()) for _ in range(epochs)]
    return trainer, results, trainer.evaluate()


# ------------------------------------------------------------------------------ splits
@pytest.mark.parametrize("variant", ["predsim", "predsim-bpf"])
def test_mlp_splits_train_bit_identically(variant, data):
    cfg = config(variant, MLP)
    one, one_results, one_eval = train(cfg, data, None)
    assert len(one.stages) == 1
    for split in ([1, 2], [2, 1], [1, 1, 1]):
        split_trainer, results, ev = train(cfg, data, split)
        assert [len(s.names) for s in split_trainer.stages] == split
        assert results == one_results, split  # every logged number of every epoch, exactly
        assert ev == one_eval, split
        assert_same_state(split_trainer.state_dict(), one.state_dict())


@pytest.mark.slow
def test_conv_split_trains_bit_identically(data):
    data = dataclasses.replace(data, x_train=data.x_train[:128], y_train=data.y_train[:128],
                               x_test=data.x_test[:64], y_test=data.y_test[:64])  # 2 steps
    cfg = config("predsim", CONV)
    _, one_results, one_eval = train(cfg, data, None, epochs=1)
    _, results, ev = train(cfg, data, [2, 3], epochs=1)
    assert results == one_results and ev == one_eval
    assert one_results[0]["layers"]["conv1"]["loss_sim"] > 0  # the blocks really trained with their heads


# ------------------------------------------------------------------------------ global rules
def test_a_global_rule_refuses_a_partial_stage(data):
    cfg = config("glob", MLP)
    spec = build_spec(cfg, data.spec.input_shape, data.spec.num_classes)
    for first, stop in ((0, 1), (1, 3), (0, 2)):
        with pytest.raises(ValueError, match="whole network"):
            Stage(cfg, spec, NUMPY, first, stop)
    with pytest.raises(ValueError, match="whole network"):
        Trainer(cfg, NUMPY, data, stages=[1, 2])
    assert len(Stage(cfg, spec, NUMPY, 0, 3).names) == 3  # the whole network is one stage


# ------------------------------------------------------------------------------ state
@pytest.mark.parametrize("variant", ["predsim-bpf", "glob"])
def test_state_dict_is_keyed_by_block_name(variant, data):
    cfg = config(variant, MLP)
    spec = build_spec(cfg, data.spec.input_shape, data.spec.num_classes)
    stages = [Stage(cfg, spec, NUMPY)] if variant == "glob" else [Stage(cfg, spec, NUMPY, 0, 1),
                                                                   Stage(cfg, spec, NUMPY, 1, 3)]
    seen = set()
    for stage in stages:
        state = stage.state_dict()
        for key, value in state.items():
            assert isinstance(value, np.ndarray), key
            parts = key.split("/")
            if parts[0] == "blocks":
                assert parts[1] in stage.names and len(parts) >= 4, key
            else:
                assert stage.is_last and parts[0] == "out", key
        for name, block in zip(stage.names, stage.net.blocks):
            for k, v in block.params.items():
                assert np.array_equal(state[f"blocks/{name}/params/{k}"], v)  # the arrays themselves
            assert f"blocks/{name}/running/mean" in state and f"blocks/{name}/opt/W/m" in state
        seen |= {k.split("/")[1] for k in state if k.startswith("blocks/")}
    assert seen == {"fc1", "fc2", "fc3"}
    last = stages[-1].state_dict()
    assert "out/params/W" in last and "out/opt/W/m" in last
    assert not any(k.startswith("out/") for s in stages[:-1] for k in s.state_dict())
    if variant == "predsim-bpf":
        assert "blocks/fc1/fixed/P" in stages[0].state_dict() and "blocks/fc1/fixed/B" in stages[0].state_dict()
        assert "blocks/fc1/params/dec_W" in stages[0].state_dict()


def test_load_state_dict_round_trips(data):
    cfg = config("predsim-bpf", MLP)
    trained, _, _ = train(cfg, data, [1, 2], epochs=1)
    state = snapshot(trained.stages[1].state_dict())
    spec = trained.spec
    fresh = Stage(cfg.replace(seed=11), spec, NUMPY, 1, 3)  # other initial arrays, to be overwritten
    assert any(not np.array_equal(v, state[k]) for k, v in fresh.state_dict().items())
    fresh.load_state_dict(state)
    assert_same_state(fresh.state_dict(), state)
    whole = snapshot(trained.state_dict())  # a whole network's state loads into one stage: the rest is ignored
    other = Stage(cfg.replace(seed=12), spec, NUMPY, 0, 1)
    other.load_state_dict(whole)
    assert_same_state(other.state_dict(), trained.stages[0].state_dict())


@pytest.mark.parametrize("split", [[2, 1], [1, 1, 1]])
def test_a_checkpoint_of_one_stage_continues_in_any_split(split, data):
    cfg = config("predsim", MLP)
    one, _, _ = train(cfg, data, None, epochs=1)
    state = snapshot(one.state_dict())
    expect = without_seconds(one.train_epoch())
    resumed = Trainer(cfg, NUMPY, data, stages=split)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    assert without_seconds(resumed.train_epoch()) == expect
    assert_same_state(resumed.state_dict(), one.state_dict())
    bad = {k: v for k, v in state.items() if k != "blocks/fc2/params/W"}
    with pytest.raises(ValueError, match="does not fit"):
        Trainer(cfg, NUMPY, data, stages=split).load_state_dict(bad)
