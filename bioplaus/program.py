"""How the user started bioplaus, so that every message quotes the command they typed.

The same code runs as ``bioplaus run`` (the console script), ``python -m bioplaus run``, ``bioplaus-run``
(an alias of ``bioplaus run``) and ``python sims/run.py`` (a checkout's thin wrappers). A hint such as
``resume with: ... --resume runs/a.h5`` or a usage line names the one in use, and the commands beside
it in the same family (``bioplaus figures``, or ``python sims/figures.py`` next to ``sims/run.py``).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Program:
    """The words that start each command: ``run``, ``sweep``, ``report``, ``figures``, ``recipes``."""

    run: str
    sweep: str
    report: str
    figures: str
    recipes: str
    describe: str

    @classmethod
    def command(cls, prefix: str = "bioplaus") -> Program:
        """The subcommands of ``prefix`` (``bioplaus`` or ``python -m bioplaus``)."""
        return cls(*(f"{prefix} {sub}" for sub in ("run", "sweep", "report", "figures", "recipes", "describe")))

    @classmethod
    def scripts(cls, folder: str = "sims") -> Program:
        """A checkout's scripts in ``folder`` as typed (``sims``, ``../sims``, an absolute path)."""

        def script(name: str) -> str:
            return "python " + shlex.quote(os.path.join(folder, name) if folder else name)

        run = script("run.py")
        return cls(run, script("sweep.py"), script("sweep.py") + " --report", script("figures.py"),
                   run + " --list-recipes", run + " --describe")

    def with_run(self, run: str) -> Program:
        """The same family with another name for ``run`` (``bioplaus-run``)."""
        return Program(run, self.sweep, self.report, self.figures, self.recipes, run + " --describe")


def scripts_from_argv0(argv0: str) -> Program:
    """The family of the script the user ran (``sys.argv[0]`` of ``sims/run.py`` and its siblings)."""
    return Program.scripts(os.path.dirname(argv0))


DEFAULT = Program.scripts()  # what a caller that does not say gets: the checkout's documented form
