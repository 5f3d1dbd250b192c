"""House style (STYLE.md habit 10): the whole tree is ruff-clean."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (it comes with the test extra)")
def test_ruff_is_clean():
    result = subprocess.run(["ruff", "check", ROOT], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
