#!/usr/bin/env python3
"""Reproduce the README figures from scratch: ``python sims/figures.py`` (see :mod:`bioplaus.figures`).

A thin wrapper of :func:`bioplaus.figures.main`, the same as the installed ``bioplaus figures``;
``python sims/figures.py --help`` lists the options.
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
    """``main`` of this file loaded as a module (as the tests load it): bioplaus.figures's, imported on first
    use, so that a program started from this file installs its signal handlers before any heavy import."""
    if name == "main":
        from bioplaus.figures import main

        return main
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(quietly(lambda: command("bioplaus.figures",
                                     lambda main: main(prog=scripts_from_argv0(sys.argv[0]).figures))))
