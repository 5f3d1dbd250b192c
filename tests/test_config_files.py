"""Configuration files (issue 25, point 4): ``--config FILE.toml`` for run and sweep (flags > file > recipe >
defaults), unknown keys refused by name, ``--config-from RUN.h5``, and ``bioplaus describe --config``, whose
TOML reads back to the same Config for every field; a bad file is one sentence, exit 2, nothing written."""

from __future__ import annotations

import dataclasses
import os

import pytest

from bioplaus import runner, settings
from bioplaus.cli import describe_main, main
from bioplaus.command import dispatch
from bioplaus.config import Config
from bioplaus.log import read_run
from bioplaus.program import Program
from bioplaus.sweep import main as sweep_main

TINY = ["--num-layers", "1", "--num-hidden", "16", "--device", "cpu", "--no-progress", "--epochs", "1",
        "--threads", "1"]
# A value other than the default for every field (the round trip must carry each one).
OTHER = {"variant": "predsim-bpf", "model": "vgg8b", "dataset": "cifar10", "epochs": 7, "batch_size": 64, "lr": 3e-4,
         "lr_decay_milestones": (2, 5), "lr_decay_fact": 0.5, "optim": "sgd", "momentum": 0.9, "weight_decay": 1e-5,
         "dropout": 0.125, "nonlin": "leakyrelu", "beta": 0.25, "num_layers": 2, "num_hidden": 512, "feat_mult": 0.5,
         "dim_in_decoder": 2048, "target_proj_size": 64, "batch_norm": False, "cutout": True, "cutout_length": 8,
         "classes_per_batch": 5, "classes_per_batch_until_epoch": 3, "seed": 42, "device": "cpu",
         "conv_algorithm": "winograd", "data_dir": 'data "dir" \\ with\ttab', "probe_every": 2, "loss_unsup": "sim",
         "alpha": 0.5, "no_similarity_std": True}


def refused(call, capsys, words, root) -> None:
    before = sorted(p.name for p in root.iterdir())
    assert call() == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], captured.err
    assert sorted(p.name for p in root.iterdir()) == before


def test_every_field_round_trips_through_toml(tmp_path):
    cfg = Config.from_dict(OTHER).resolve()
    defaults = Config().resolve()
    for name in Config.field_names():  # every field, each with a value of its own
        assert getattr(cfg, name) != getattr(defaults, name), name
    path = tmp_path / "all.toml"
    path.write_text(settings.to_toml(cfg, ["a comment"]), encoding="utf-8")
    assert runner.new_config({}, config_file=str(path)).config == cfg
    path.write_text(settings.to_toml(defaults), encoding="utf-8")
    assert runner.new_config({}, config_file=str(path)).config == defaults
    unset = Config()  # fields left to their defaults are comments, and read back as left
    path.write_text(settings.to_toml(unset), encoding="utf-8")
    assert "# beta is not set" in path.read_text() and runner.new_config({}, config_file=str(path)).config == defaults


def test_describe_config_prints_toml_that_reads_back(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    program = Program.command()
    flags = ["--recipe", "cifar10-vgg8b-predsim", "--epochs", "40", "--dropout", "0.05"]
    assert describe_main([*flags, "--config"], program) == 0
    text = capsys.readouterr().out
    assert text.startswith("# bioplaus ") and "train it: bioplaus run --config FILE.toml" in text
    assert "lr_decay_milestones = [20, 30, 35, 38]" in text  # the recipe's 200 300 350 375 of 400, scaled
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    expected = runner.new_config({"epochs": 40, "dropout": 0.05}, "cifar10-vgg8b-predsim").config
    assert runner.new_config({}, config_file="c.toml").config == expected
    assert describe_main(["--config", "c.toml", "--seed", "9"], program) == 0  # a file and a flag over it
    again = capsys.readouterr().out
    (tmp_path / "d.toml").write_text(again, encoding="utf-8")
    assert runner.new_config({}, config_file="d.toml").config == dataclasses.replace(expected, seed=9)
    assert describe_main(["--config", "c.toml"], program) == 0
    assert "lr_decay_milestones = [20, 30, 35, 38]" in capsys.readouterr().out
    assert describe_main(["--recipe", "cifar10-vgg8b-predsim"], program) == 0  # without --config: the network
    assert capsys.readouterr().out.splitlines()[-1].startswith("parameters: ")


def test_flags_over_the_file_over_the_recipe(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('recipe = "fashion-mnist-mlp-predsim"\nlr = 1e-3\ndropout = 0.1\nnum-hidden = 64\n',
                    encoding="utf-8")
    cfg = runner.new_config({"dropout": 0.2}, config_file=str(path)).config
    assert (cfg.lr, cfg.dropout, cfg.num_hidden) == (1e-3, 0.2, 64)  # file, flag over file, dashes read too
    assert (cfg.nonlin, cfg.epochs) == ("leakyrelu", 200)  # the recipe's, under the file
    assert cfg.lr_decay_milestones == (100, 150, 175, 188)
    other = runner.new_config({}, "fashion-mnist-mlp-sim", config_file=str(path)).config  # --recipe wins
    assert other.variant == "sim" and other.lr == 1e-3
    path.write_text('recipe = "fashion-mnist-mlp-predsim"\nepochs = 20\n', encoding="utf-8")
    made = runner.new_config({}, config_file=str(path))
    assert made.config.lr_decay_milestones == (10, 15, 18, 19) and "scaled from recipe" in made.schedule


def test_a_run_from_a_config_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text('variant = "sim-bpf"\nepochs = 2\nlr_decay_milestones = [1]\n',
                                       encoding="utf-8")
    assert main([*TINY, "--config", "run.toml", "--epochs", "2", "--out", "a.h5"]) == 0
    assert "lr schedule: 0.0005, x0.25 after epochs 1 (as given in run.toml)" in capsys.readouterr().out
    cfg = read_run("a.h5").config
    assert (cfg.variant, cfg.epochs, cfg.lr_decay_milestones, cfg.num_hidden) == ("sim-bpf", 2, (1,), 16)


BAD_FILES = [
    ("unknown.toml", b"lrr = 1e-3\n", "unknown key 'lrr' in unknown.toml; did you mean lr?"),
    ("table.toml", b"[model]\nname = 'mlp'\n", "model in table.toml: --model takes text"),
    ("table2.toml", b"[net]\nname = 'mlp'\n", "has a [net] table"),
    ("sweep.toml", b"[sweep]\nrecipes = ['x']\n", "configures a sweep"),
    ("type.toml", b"lr = 'fast'\n", "lr in type.toml: --lr takes a number"),
    ("invalid.toml", b"lr = = 3\n", "is not valid TOML"),
    ("binary.toml", b"lr = 1\n\xff\xfe\n", "is not UTF-8 text"),
    ("recipe.toml", b"recipe = 'cifar10-vgg8-predsim'\n", "did you mean cifar10-vgg8b-predsim"),
    ("late.toml", b"epochs = 4\nlr_decay_milestones = [2, 6]\n", "--lr-decay-milestones 6 is not below --epochs 4"),
]


@pytest.mark.parametrize("name,data,words", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_one_sentence_and_nothing_is_written(name, data, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(data)
    refused(lambda: main(["--no-progress", "--config", name]), capsys, words, tmp_path)


def test_files_that_are_not_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.toml").mkdir()
    os.mkfifo(tmp_path / "fifo.toml")  # never opened: a FIFO would block
    (tmp_path / "huge.toml").write_bytes(b"# " + b"x" * settings.MAX_FILE_BYTES + b"\n")
    for name, words in (("folder.toml", "is a folder"), ("fifo.toml", "is a FIFO"), ("missing.toml", "no such file"),
                        ("huge.toml", "larger than a TOML configuration file can be"), ("", "needs the path")):
        refused(lambda name=name: main([*TINY, "--config", name]), capsys, words, tmp_path)
    refused(lambda: main([*TINY, "--config", "/dev/zero"]), capsys, "is a device", tmp_path)
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.toml"
        locked.write_text("lr = 1e-3\n")
        locked.chmod(0)
        refused(lambda: main([*TINY, "--config", "locked.toml"]), capsys, "permission denied", tmp_path)
        locked.chmod(0o600)


def test_config_from_repeats_a_logged_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--variant", "drtp", "--dropout", "0.1", *TINY, "--out", "a.h5"]) == 0
    assert main(["--config-from", "a.h5", "--seed", "2", "--no-progress", "--out", "b.h5"]) == 0
    a, b = read_run("a.h5"), read_run("b.h5")
    assert b.config == dataclasses.replace(a.config, seed=2) and b.num_epochs == 1  # a new run, not a resume
    capsys.readouterr()
    refused(lambda: main(["--config-from", "nothing.h5"]), capsys, "no such file", tmp_path)
    (tmp_path / "text.h5").write_text("not a log")
    refused(lambda: main(["--config-from", "text.h5"]), capsys, "--config-from", tmp_path)
    refused(lambda: main(["--config-from", "a.h5", "--recipe", "fashion-mnist-mlp-pred"]), capsys,
            "cannot be combined with a recipe", tmp_path)
    refused(lambda: main(["--resume", "a.h5", "--config-from", "a.h5"]), capsys, "cannot be combined with --resume",
            tmp_path)


SWEEP_TOML = """\
[sweep]
recipes = ["fashion-mnist-mlp-pred", "fashion-mnist-mlp-sim"]
seeds = [1, 2]
out_dir = "out"
epochs = 2
jobs = 2

[run]
lr = [1e-3, 5e-4]
num_hidden = 16
num_layers = 1
dataset = "fashion-mnist-mini"
"""


def test_a_sweep_config_holds_the_sweeps_options_and_the_runs_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.toml").write_text(SWEEP_TOML, encoding="utf-8")
    assert sweep_main(["--config", "sweep.toml", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "8 runs: 8 new" and not (tmp_path / "out").exists()
    assert {ln.split()[1] for ln in lines[:-1]} == {
        os.path.join("out", f"fashion-mnist-mlp-{v}-lr{lr}-s{s}.h5")
        for v in ("pred", "sim") for lr in ("0.001", "0.0005") for s in (1, 2)}
    # the options typed win: one recipe, one seed, one lr
    assert sweep_main(["--config", "sweep.toml", "--recipes", "fashion-mnist-mlp-pred", "--seeds", "3", "--set",
                       "lr=2e-3", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"new       {os.path.join('out', 'fashion-mnist-mlp-pred-s3.h5')}",
                                                    "1 runs: 1 new"]


@pytest.mark.parametrize("text,words", [
    ("[sweep]\nrecipe = ['x']\n", "unknown key 'recipe' in the [sweep] table of bad.toml; did you mean recipes?"),
    ("[run]\nlrr = 1\n", "unknown key 'lrr' in the [run] table of bad.toml; did you mean lr?"),
    ("[run]\nseed = 3\n", "give it as seeds in the [sweep] table"),
    ("lr = 3\n", "has 'lr' at its top level"),
    ("[sweep]\njobs = 'two'\n", "jobs in the [sweep] table of bad.toml takes an integer"),
    ("[run]\nlr = []\n", "is an empty list"),
    ("[run]\nlr = 'x'\n", "lr in the [run] table of bad.toml: takes a number"),
    ("[sweep\n", "is not valid TOML"),
])
def test_a_bad_sweep_file_is_refused_by_name(text, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text(text, encoding="utf-8")
    refused(lambda: sweep_main(["--config", "bad.toml", "--recipes", "fashion-mnist-mlp-pred", "--out-dir", "o"]),
            capsys, words, tmp_path)


def test_the_bioplaus_command_reads_config_files_too(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.toml").write_text(SWEEP_TOML, encoding="utf-8")
    assert dispatch(["sweep", "--config", "sweep.toml", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "8 runs: 8 new"
