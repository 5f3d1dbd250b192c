#!/usr/bin/env python3
"""Reproduce the README figures from scratch: ``python sims/figures.py`` (see :mod:`bioplaus.figures`).

A thin wrapper of :func:`bioplaus.figures.main`; ``python sims/figures.py --help`` lists the options.
"""

import os
import sys

# Run from a checkout without installing: prefer the bioplaus package that sits beside sims/.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "bioplaus", "__init__.py")):
    sys.path.insert(0, _ROOT)

from bioplaus.figures import main

if __name__ == "__main__":
    sys.exit(main())
