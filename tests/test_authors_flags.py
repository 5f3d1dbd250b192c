"""The authors' flags (issue 25, point 8): their train.py's --loss-sup, --bio, --backprop, --no-detach,
--length, --no-cuda and dataset names run here with the same meaning, saying once what they became; the
ones with no equivalent are one sentence that names what to use instead."""

from __future__ import annotations

import pytest

from bioplaus.authors import translate
from bioplaus.cli import main
from bioplaus.errors import ConfigError

MAPPED = [
    (["--loss-sup", "pred"], "pred"), (["--loss-sup", "sim"], "sim"), (["--loss-sup=predsim"], "predsim"),
    (["--loss-sup", "pred", "--bio"], "pred-bpf"), (["--bio", "--loss-sup", "sim"], "sim-bpf"),
    (["--loss-sup", "predsim", "--bio"], "predsim-bpf"), (["--bio"], "predsim-bpf"),
    (["--backprop"], "glob"), (["--loss-sup", "sim", "--no-detach"], "glob+sim"), (["--no-detach"], "glob+predsim"),
]


@pytest.mark.parametrize("argv,variant", MAPPED, ids=[" ".join(a) for a, _ in MAPPED])
def test_the_variant_flags(argv, variant):
    out, note = translate(["--epochs", "3", *argv, "--lr", "1e-3"])
    assert out == ["--epochs", "3", "--lr", "1e-3", "--variant", variant]
    assert note.startswith("note: the authors' flags, read as bioplaus's: ") and f"--variant {variant}" in note


def test_the_other_flags():
    out, note = translate(["--cutout", "--length", "8", "--n_holes", "1", "--no-cuda", "--dataset", "CIFAR10",
                           "--progress-bar", "--no-print-stats"])
    assert out == ["--cutout", "--dataset", "cifar10", "--cutout-length", "8", "--device", "cpu"]
    for said in ("--length 8 -> --cutout-length 8", "--no-cuda -> --device cpu", ("--dataset CIFAR10 -> --dataset "
                 "cifar10"), "--progress-bar -> nothing", "--no-print-stats -> nothing", "--n_holes 1 ->"):
        assert said in note
    assert translate(["--dataset=FashionMNIST"]) == (["--dataset=fashion-mnist"], ("note: the authors' --dataset "
                                                    "FashionMNIST -> --dataset fashion-mnist"))
    assert translate(["--variant", "sim", "--epochs", "2"]) == (["--variant", "sim", "--epochs", "2"], None)


@pytest.mark.parametrize("argv,words", [
    (["--pre-act"], "--pre-act has no equivalent here: it is for the authors' ResNets"),
    (["--save-dir", "/tmp/x"], "give its path with --out PATH.h5"),
    (["--n_holes", "2"], "cutout makes one hole"),
    (["--backprop", "--bio"], "use --variant glob"),
    (["--no-detach", "--bio"], "use --variant glob+predsim"),
    (["--loss-sup", "recon"], "--loss-sup takes pred, sim or predsim"),
    (["--loss-sup"], "needs a value"),
    (["--loss-sup", "sim", "--variant", "pred"], "give either --variant or the authors' --loss-sup sim"),
])
def test_no_equivalent_is_one_sentence(argv, words, capsys, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        translate(argv)
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(("error: the authors' ", "error: give either")), err
    assert not list(tmp_path.iterdir())


def test_a_run_with_the_authors_flags_says_once_what_they_became(capsys):
    assert main(["--loss-sup", "predsim", "--bio", "--describe"]) == 0
    captured = capsys.readouterr()
    assert "variant predsim-bpf" in captured.out.splitlines()[0]
    notes = captured.err.strip().splitlines()
    assert len(notes) == 1 and "--loss-sup predsim --bio -> --variant predsim-bpf (beta 0.01" in notes[0]
