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

from bioplaus.command import quietly
from bioplaus.figures import main
from bioplaus.program import scripts_from_argv0

if __name__ == "__main__":
    sys.exit(quietly(lambda: main(prog=scripts_from_argv0(sys.argv[0]).figures)))
