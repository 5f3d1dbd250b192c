"""The README says what the code does (issue 25, point 9): the quick start's rule, the notebooks' install
line, a minutes-long sweep on the embedded data before the hours-long ones, the figures' dependence on BLAS
and threads, the describe count's label, and every command of ``bioplaus``."""

from __future__ import annotations

import os
import re
import shlex

from bioplaus.command import COMMANDS
from bioplaus.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_the_quick_start_names_the_default_rule_right():
    quick = " ".join(section(readme(), "Quick start").split())
    assert Config().variant == "predsim"
    assert "the default rule, without `--variant`, is predsim" in quick
    assert "network (a 3×1024 MLP, predsim-bpf rule)" not in quick


def test_the_notebooks_install_line_and_its_extra():
    text = readme()
    assert 'pip install ".[notebooks]" && jupyter lab analysis/' in " ".join(text.split())
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        assert re.search(r'^notebooks = \["jupyterlab"', f.read(), re.MULTILINE)


def test_a_minutes_long_sweep_comes_first():
    sweeps = section(readme(), "Sweeps")
    lines = [ln for block in re.findall(r"```bash\n(.*?)```", sweeps, re.DOTALL) for ln in block.splitlines()
             if " sweep " in ln]
    assert "--set dataset=fashion-mnist-mini" in lines[0] and "--epochs 3" in lines[0]
    assert all("fashion-mnist-mini" not in ln for ln in lines[1:])  # the hours-long ones after it


def test_figures_and_describe_say_what_their_numbers_are():
    text = " ".join(readme().split())
    assert "The numbers depend on the BLAS library, its kernels and its thread count" in text
    assert "The count (last line `parameters: N`) is the forward network's" in text
    assert "are listed apart, per block" in text


def test_every_command_is_shown():
    text = readme()
    for command in COMMANDS:
        assert f"`bioplaus {command}" in text or f"bioplaus {command} " in text, command
    for words in ("python -m bioplaus", "bioplaus --version", "--config FILE.toml", "--config-from RUN.h5",
                  "--threads N", "--keep-checkpoint", "bioplaus describe --config", "[sweep]", "[run]"):
        assert words in text, words
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):  # each example names a real command
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "bioplaus" in words and words.index("bioplaus") + 1 < len(words):
                follow = words[words.index("bioplaus") + 1]
                assert follow in COMMANDS or follow.startswith("-"), line
