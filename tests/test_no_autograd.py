"""The engine never imports an autograd framework: every backward is written by hand."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import bioplaus

FORBIDDEN = ("torch", "jax", "tensorflow")
PACKAGE_DIR = Path(bioplaus.__file__).resolve().parent


def test_importing_every_module_loads_no_autograd_framework():
    code = (
        "import importlib, pkgutil, sys, bioplaus\n"
        "names = [m.name for m in pkgutil.walk_packages(bioplaus.__path__, 'bioplaus.')]\n"
        "for n in names: importlib.import_module(n)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(f'{len(names)}|{\",\".join(bad)}')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    count, bad = r.stdout.strip().splitlines()[-1].split("|")
    assert int(count) >= 2  # it really walked the package (ops, optim, ...)
    assert bad == "", f"bioplaus imported {bad}"


def test_no_source_file_imports_an_autograd_framework():
    pattern = re.compile(r"^\s*(import|from)\s+(torch|jax|tensorflow)\b", re.MULTILINE)
    files = list(PACKAGE_DIR.rglob("*.py"))
    assert any(f.name == "conv.py" for f in files)
    offenders = [str(f) for f in files if pattern.search(f.read_text(encoding="utf-8"))]
    assert offenders == []
