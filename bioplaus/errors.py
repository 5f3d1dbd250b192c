"""The errors that carry a sentence for the user (each module that raises one imports it from here,
so the lowest modules need not import the configuration)."""


def sentence(message: object) -> str:
    """A message as the one line shown after ``error: ``: whitespace folded, ending with a full stop (or a
    question or exclamation mark)."""
    text = " ".join(str(message).split())
    return text if text.endswith((".", "?", "!")) else text + "."


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one sentence for the user."""


# How to get MPI, in the words every MPI-related error uses.
MPI_INSTALL = 'pip install ".[mpi]" (mpi4py and MPICH from the package index)'
