"""``python -m bioplaus COMMAND ...``: the ``bioplaus`` command (see :mod:`bioplaus.command`)."""

import sys

from bioplaus.command import quietly, started

if __name__ == "__main__":  # (not when an MPI worker of mpi4py.futures imports this module as __worker__)
    sys.exit(quietly(lambda: started(sys.argv[1:], "python -m bioplaus")))
