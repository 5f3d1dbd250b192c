#!/usr/bin/env python3
"""Run the paper's recipes (and flag grids) over seeds, each an ordinary ``sims/run.py`` run with its own log.

    python sims/sweep.py --recipes 'fashion-mnist-mlp-*' --seeds 1 2 --out-dir runs/fmnist --jobs 2
    python sims/sweep.py --recipes fashion-mnist-mlp-pred --set lr=1e-3,5e-4 --seeds 1 2 3 --out-dir runs/lr
    mpiexec -n 9 python -m mpi4py.futures sims/sweep.py --recipes 'cifar10-*' --seeds 1 2 --out-dir runs/c10
    python sims/sweep.py --report runs/fmnist [--layout paper]

A thin wrapper of :func:`bioplaus.sweep.main`, the same as the installed ``bioplaus sweep`` (whose runs
start as ``python -m bioplaus run``; these start this checkout's sims/run.py). Run the same command again
after a stop, a crash or a kill: completed runs are skipped, the others resumed. ``python sims/sweep.py --help`` lists the options; :mod:`bioplaus.sweep` documents the naming,
the states of a run and the exit statuses.
"""

import os
import sys

# Run from a checkout without installing: prefer the bioplaus package that sits beside sims/. (Under
# mpi4py.futures, the workers run this file too, as __worker__: this line lets them import bioplaus.)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "bioplaus", "__init__.py")):
    sys.path.insert(0, _ROOT)

from bioplaus.command import quietly  # these three are light: the signal handlers come before the heavy imports
from bioplaus.program import scripts_from_argv0
from bioplaus.startup import command

RUN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.py")


def __getattr__(name: str):
    """``main`` of this file loaded as a module (as the tests load it): bioplaus.sweep's, imported on first
    use, so that a program started from this file installs its signal handlers before any heavy import."""
    if name == "main":
        from bioplaus.sweep import main

        return main
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(quietly(lambda: command("bioplaus.sweep", lambda main: main(run_script=RUN_SCRIPT,
                                                                         program=scripts_from_argv0(sys.argv[0])))))
