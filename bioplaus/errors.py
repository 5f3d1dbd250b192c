"""The errors that carry a sentence for the user (each module that raises one imports it from here,
so the lowest modules need not import the configuration)."""


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one sentence for the user."""


# How to get MPI, in the words every MPI-related error uses.
MPI_INSTALL = 'pip install ".[mpi]" (mpi4py and MPICH from the package index)'
