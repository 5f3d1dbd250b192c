"""The configuration: ``from_dict`` refuses unknown keys and wrong types, ``resolve`` fills each variant's
β from the rule table and every variant resolves (a rule registered at run time too), a configuration
survives JSON exactly, the dataset-dependent checks, and that reading one loads no engine.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bioplaus import config, rules
from bioplaus.config import Config, ConfigError
from bioplaus.rules import RULES


# ------------------------------------------------------------------------------ from_dict
@pytest.mark.parametrize("key", ["learning_rate", "lr-decay-fact", "Variant", ""])
def test_from_dict_rejects_unknown_keys(key):
    with pytest.raises(ConfigError, match=f"unknown configuration key {key!r}"):
        Config.from_dict({"lr": 0.1, key: 1})


@pytest.mark.parametrize("key,value,match", [
    ("epochs", "10", "--epochs takes an integer"),
    ("epochs", 2.5, "--epochs takes an integer"),
    ("epochs", True, "--epochs takes an integer"),
    ("lr", "0.1", "--lr takes a number"),
    ("lr", False, "--lr takes a number"),
    ("batch_norm", 1, "--batch-norm is true or false"),
    ("batch_norm", "yes", "--batch-norm is true or false"),
    ("variant", 3, "--variant takes text"),
    ("lr_decay_milestones", ["5"], "--lr-decay-milestones takes a list of integers"),
    ("lr_decay_milestones", [5, True], "--lr-decay-milestones takes a list of integers"),
    ("lr_decay_milestones", 2.0, "--lr-decay-milestones takes a list of integers"),
    ("epochs", None, "--epochs needs a value"),
    ("variant", None, "--variant needs a value"),
])
def test_from_dict_rejects_wrong_types(key, value, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict({key: value})


def test_from_dict_coerces_what_is_unambiguous():
    cfg = Config.from_dict({"epochs": 4.0, "lr": 1, "lr_decay_milestones": 3, "beta": None, "data_dir": None})
    assert cfg.epochs == 4 and type(cfg.epochs) is int
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.lr_decay_milestones == (3,)
    assert Config.from_dict({"lr_decay_milestones": [2, 4]}).lr_decay_milestones == (2, 4)
    base = Config(epochs=7, seed=9)
    changed = Config.from_dict({"lr": 0.5}, base=base)
    assert (changed.epochs, changed.seed, changed.lr) == (7, 9, 0.5)  # the base's values kept
    assert base.lr == Config().lr  # frozen: the base is not changed
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.lr = 1.0


# ------------------------------------------------------------------------------ resolve
@pytest.mark.parametrize("variant", list(RULES))
def test_every_variant_resolves_with_its_rules_beta(variant):
    cfg = Config(variant=variant).resolve()
    assert cfg.variant == variant
    assert cfg.beta == RULES[variant].default_beta
    assert Config(variant=variant, beta=0.3).resolve().beta == 0.3  # a given β is kept
    assert cfg.resolve() == cfg  # resolving twice changes nothing


def test_the_paper_betas():
    assert Config(variant="predsim").resolve().beta == 0.99
    assert Config(variant="predsim-bpf").resolve().beta == 0.01


def test_variant_names_are_defined_once_by_the_rules():
    assert not hasattr(config, "VARIANTS")  # the configuration names no rule: rules.RULES is the one table
    assert set(rules.VARIANTS) <= set(RULES)


def test_resolve_fills_the_dense_layers_and_checks():
    assert Config(model="mlp").resolve().num_layers == 3
    assert Config(model="vgg8b").resolve().num_layers == 1
    assert Config(model="mlp", num_layers=2).resolve().num_layers == 2
    with pytest.raises(ConfigError, match="unknown variant 'backprop'"):
        Config(variant="backprop").resolve()
    with pytest.raises(ConfigError, match="--feat-mult"):
        Config(model="mlp", feat_mult=2.0).resolve()
    with pytest.raises(ConfigError, match="--beta must be in"):
        Config(beta=1.5).resolve()
    with pytest.raises(ConfigError, match="increasing order"):
        Config(lr_decay_milestones=(8, 5)).resolve()


# ------------------------------------------------------------------------------ JSON
@pytest.mark.parametrize("changes", [
    {},
    {"variant": "predsim-bpf", "model": "vgg8b", "feat_mult": 0.5, "lr_decay_milestones": (), "beta": 0.25,
     "data_dir": "/tmp/data", "cutout": True, "dropout": 0.1, "nonlin": "leakyrelu", "seed": 2**32 - 1},
    {"lr": 1e-17, "lr_decay_milestones": (1, 2, 3), "momentum": 0.9, "optim": "sgd", "classes_per_batch": 2},
])
def test_config_round_trips_through_json(changes):
    cfg = Config(**changes).resolve()
    text = cfg.to_json()
    assert json.loads(text) == cfg.to_dict()
    assert Config.from_json(text) == cfg
    assert Config.from_json(json.dumps(json.loads(text))) == cfg  # after another JSON writer too
    assert set(json.loads(text)) == set(Config.field_names())


def test_an_unresolved_config_round_trips_too():
    cfg = Config(variant="sim")
    assert cfg.beta is None and Config.from_json(cfg.to_json()) == cfg


# ------------------------------------------------------------------------------ check_dataset
def test_check_dataset():
    Config(classes_per_batch=10, batch_size=10).resolve().check_dataset(10, (1, 28, 28))
    Config().resolve().check_dataset(2, (3, 32, 32))  # no class sampling: any class count
    with pytest.raises(ConfigError, match="--classes-per-batch 11 is more than the 10 classes of fashion-mnist-mini"):
        Config(classes_per_batch=11, batch_size=64).resolve().check_dataset(10, (1, 28, 28))
    with pytest.raises(ConfigError, match="--batch-size 4 cannot hold 5 classes per batch"):
        Config(classes_per_batch=5, batch_size=4).resolve().check_dataset(10, (1, 28, 28))


def test_lr_schedule():
    cfg = Config(lr=1.0, lr_decay_milestones=(2, 4), lr_decay_fact=0.5)
    assert [cfg.lr_at(e) for e in range(1, 7)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


# ------------------------------------------------------------------------------ the engine, not loaded
def test_reading_logs_and_configurations_loads_no_engine():
    """The log, the analysis and the sweep's report read a configuration (and a whole log, and a results
    table) without importing the rules, the models, the block kinds or the ops; resolving one asks them."""
    golden = Path(__file__).resolve().parent / "golden" / "v1-run.h5"
    code = textwrap.dedent(f"""
        import sys
        import bioplaus.analysis, bioplaus.log, bioplaus.sweep.report
        from bioplaus.config import Config
        run = bioplaus.log.read_run({str(golden)!r})
        bioplaus.analysis.results_markdown(bioplaus.analysis.results_table([{str(golden)!r}]))
        Config.from_json(run.attrs["config"]).validate()
        engine = ("bioplaus.rules", "bioplaus.ops", "bioplaus.models", "bioplaus.kinds", "bioplaus.blocks")
        print(" ".join(sorted(m for m in sys.modules if m.startswith(engine))) or "none")
        Config(variant="predsim").resolve()
        print("bioplaus.rules" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["none", "True"]


def test_a_rule_registered_at_run_time_is_accepted():
    rules.register("pred-copy", rules.RULES["pred"])
    try:
        assert Config(variant="pred-copy").resolve().beta == rules.RULES["pred"].default_beta
    finally:
        del rules.RULES["pred-copy"]
    with pytest.raises(ConfigError, match="unknown variant 'pred-copy'"):
        Config(variant="pred-copy").resolve()
