"""The learning-rate schedule follows --epochs (issue 25, point 1): the default milestones in the paper's
shape, a recipe's scaled to a new length, both printed in the header and logged resolved; a milestone
typed beyond --epochs refused; --help shows every default; a logged schedule is never re-resolved."""

from __future__ import annotations

import dataclasses

import pytest

from bioplaus import cli, runner
from bioplaus.cli import main
from bioplaus.config import Config, default_milestones, scale_milestones
from bioplaus.log import RunLog, read_run

TINY = ["--variant", "predsim", "--num-layers", "1", "--num-hidden", "16", "--device", "cpu", "--no-progress",
        "--threads", "1"]


def test_the_default_is_the_papers_shape_over_the_epochs():
    assert default_milestones(200) == (100, 150, 175, 188)  # the paper's own (187.5 rounds half up)
    assert default_milestones(10) == (5, 8, 9)  # 7.5 -> 8, 8.75 -> 9, 9.375 -> 9 (a repeat, dropped)
    assert default_milestones(50) == (25, 38, 44, 47)
    assert default_milestones(3) == (2,)  # 1.5 -> 2, 2.25 -> 2, 2.625 -> 3 (not below 3: dropped)
    assert default_milestones(2) == (1,)
    assert default_milestones(1) == ()
    assert Config(epochs=50).resolve().lr_decay_milestones == (25, 38, 44, 47)
    assert Config(epochs=50, lr_decay_milestones=(3,)).resolve().lr_decay_milestones == (3,)


def test_a_recipes_schedule_scales_as_fractions_of_its_epochs():
    assert scale_milestones((100, 150, 175, 188), 200, 10) == (5, 8, 9)
    assert scale_milestones((200, 300, 350, 375), 400, 40) == (20, 30, 35, 38)  # 37.5 rounds half up
    assert scale_milestones((50, 75, 89, 94), 100, 1) == ()  # nothing left below 1 epoch
    made = runner.new_config({"epochs": 10}, "fashion-mnist-mlp-predsim")
    assert made.config.lr_decay_milestones == (5, 8, 9) and made.config.epochs == 10
    assert made.schedule == "scaled from recipe fashion-mnist-mlp-predsim: 100 150 175 188 of its 200 epochs"
    same = runner.new_config({}, "fashion-mnist-mlp-predsim")
    assert same.config.lr_decay_milestones == (100, 150, 175, 188) and "scaled" not in same.schedule
    typed = runner.new_config({"epochs": 10, "lr_decay_milestones": [3]}, "fashion-mnist-mlp-predsim")
    assert typed.config.lr_decay_milestones == (3,) and typed.schedule == "as given"


def test_the_header_says_the_schedule_once_and_the_log_records_it(tmp_path, capsys):
    out = str(tmp_path / "a.h5")
    assert main([*TINY, "--epochs", "4", "--out", out]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith("lr schedule:")]
    assert lines == [("lr schedule: 0.0005, x0.25 after epochs 2 3 (the default: after 1/2, 3/4, 7/8 and 15/16 of "
                     "the epochs)")]
    run = read_run(out)
    assert run.config.lr_decay_milestones == (2, 3)
    assert list(run.epochs["lr"]) == [5e-4, 5e-4, 5e-4 * 0.25, 5e-4 * 0.25**2]


def test_a_recipe_with_fewer_epochs_says_its_scaled_schedule_once(tmp_path, capsys):
    out = str(tmp_path / "r.h5")
    argv = ["--recipe", "fashion-mnist-mlp-predsim", "--epochs", "2", "--num-layers", "1", "--num-hidden", "16",
            "--dropout", "0", "--dataset", "fashion-mnist-mini", "--device", "cpu", "--no-progress", "--out", out]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("scaled from recipe") == 1
    assert "lr schedule: 0.0005, x0.25 after epochs 1 (scaled from recipe fashion-mnist-mlp-predsim: 100 150 175 " \
           "188 of its 200 epochs)" in text
    assert read_run(out).config.lr_decay_milestones == (1,)


@pytest.mark.parametrize("argv,word", [(["--epochs", "3", "--lr-decay-milestones", "2", "5"], "5"),
                                       (["--epochs", "3", "--lr-decay-milestones", "3"], "3")])
def test_a_milestone_typed_beyond_the_epochs_is_refused(argv, word, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --lr-decay-milestones {word} is not below --epochs 3")
    assert not list(tmp_path.iterdir())


def test_no_milestones_is_a_constant_rate(tmp_path):
    cfg = runner.new_config({"epochs": 5, "lr_decay_milestones": []}).config
    assert cfg.lr_decay_milestones == () and [cfg.lr_at(e) for e in range(1, 6)] == [cfg.lr] * 5


def test_help_shows_every_default_from_the_config(capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    raw = capsys.readouterr().out
    entries: dict[str, str] = {}  # each option's entry, from its line ("  --flag ...") to the next option's
    flag = None
    for line in raw[raw.index("run configuration ("):].splitlines():
        if line.startswith("  -"):
            flag = line.split()[0]
            entries[flag] = line
        elif flag and line.startswith("   "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    entries = {k: " ".join(v.split()) for k, v in entries.items()}
    text = " ".join(raw.split())
    defaults = Config()
    by_dest = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    for f in dataclasses.fields(Config):
        entry = entries[by_dest[f.name]]
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            continue  # switches say on/off, checked below
        if value is None:
            assert "(default: " in entry, entry
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            assert f"(default: {shown})" in entry, (f.name, entry)
    assert "--cutout (default: off)" in text and "--no-batch-norm (default: off)" in text
    assert "after 1/2, 3/4, 7/8 and 15/16 of --epochs" in text


def test_resume_keeps_the_logged_schedule(tmp_path, capsys):
    """A run of 2 epochs (default milestones (1,)) extended to 4 keeps (1,): it is not re-resolved to (2, 3)."""
    out = str(tmp_path / "a.h5")
    assert main([*TINY, "--epochs", "2", "--out", out]) == 0
    assert main(["--resume", out, "--epochs", "4", "--no-progress", "--threads", "1"]) == 0
    assert "lr schedule: 0.0005, x0.25 after epochs 1 (as logged)" in capsys.readouterr().out
    run = read_run(out)
    assert run.config.lr_decay_milestones == (1,) and run.config.epochs == 4
    assert list(run.epochs["lr"]) == [5e-4] + [5e-4 * 0.25] * 3


def test_an_old_log_keeps_its_schedule_beyond_its_epochs(tmp_path):
    """Logs of bioplaus before this change hold (5, 8) for short runs: still readable, resumable as they are."""
    cfg = Config(variant="predsim", num_layers=1, num_hidden=16, epochs=3, lr_decay_milestones=(5, 8),
                 device="cpu").resolve()
    path = str(tmp_path / "old.h5")
    RunLog.create(path, cfg, "cpu", 10)
    assert read_run(path).config.lr_decay_milestones == (5, 8)


def test_a_sweep_scales_the_recipes_schedule_and_keeps_a_logged_one(tmp_path):
    from bioplaus.sweep import SweepError, build_runs, inspect, parse_sets

    spec = build_runs(["fashion-mnist-mlp-predsim"], [1], 10, [], str(tmp_path))[0]
    assert spec.config == runner.new_config({"epochs": 10, "seed": 1}, "fashion-mnist-mlp-predsim").config
    assert spec.config.lr_decay_milestones == (5, 8, 9) and spec.derived_schedule
    # a log of this run made before the scaling (the recipe's own milestones) is the same run: resumed as logged
    old = dataclasses.replace(spec.config, lr_decay_milestones=(100, 150, 175, 188))
    RunLog.create(spec.path, old, "cpu", 10)
    plan = inspect(spec)
    assert plan.action == "resume" and "keeps its logged schedule, decays after 100 150 175 188" in plan.detail
    typed = build_runs(["fashion-mnist-mlp-predsim"], [1], 10, parse_sets(["lr_decay_milestones=3 6"]),
                       str(tmp_path))[0]
    assert typed.config.lr_decay_milestones == (3, 6) and not typed.derived_schedule
    with pytest.raises(SweepError, match="holds another configuration"):
        inspect(typed)  # a schedule the sweep sets is part of the run
    with pytest.raises(SweepError, match="not below --epochs 10"):
        build_runs(["fashion-mnist-mlp-predsim"], [1], 10, parse_sets(["lr_decay_milestones=5 12"]), str(tmp_path))
