#!/usr/bin/env python3
"""Train one network and log every epoch to HDF5: ``python sims/run.py --variant predsim-bpf``.

A thin wrapper of :func:`bioplaus.cli.main`, the same as the installed ``bioplaus run`` (and
``bioplaus-run``); ``python sims/run.py --help`` lists the flags.
"""

import os
import sys

# Run from a checkout without installing: prefer the bioplaus package that sits beside sims/.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "bioplaus", "__init__.py")):
    sys.path.insert(0, _ROOT)

from bioplaus.cli import main
from bioplaus.command import quietly
from bioplaus.program import scripts_from_argv0

if __name__ == "__main__":
    sys.exit(quietly(lambda: main(program=scripts_from_argv0(sys.argv[0]))))
