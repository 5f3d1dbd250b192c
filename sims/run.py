#!/usr/bin/env python3
"""Train one network and log every epoch to HDF5: ``python sims/run.py --variant predsim-bpf``.

A thin wrapper of :func:`bioplaus.cli.main`, the same as the installed ``bioplaus run`` (and
``bioplaus-run``), started through :mod:`bioplaus.startup` (its signal handlers come before the heavy
imports); ``python sims/run.py --help`` lists the flags.
"""

import os
import sys

# Run from a checkout without installing: prefer the bioplaus package that sits beside sims/.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "bioplaus", "__init__.py")):
    sys.path.insert(0, _ROOT)

from bioplaus.command import quietly  # these three are light: the signal handlers come before the heavy imports
from bioplaus.program import scripts_from_argv0
from bioplaus.startup import command


def __getattr__(name: str):
    """``main`` of this file loaded as a module (as the tests load it): bioplaus.cli's, imported on first use,
    so that a program started from this file installs its signal handlers before any heavy import."""
    if name == "main":
        from bioplaus.cli import main

        return main
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(quietly(lambda: command("bioplaus.cli", lambda main: main(program=scripts_from_argv0(sys.argv[0])))))
