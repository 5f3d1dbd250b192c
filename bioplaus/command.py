"""The ``bioplaus`` command: one entry for everything a user runs, installed with the package.

    bioplaus run --variant predsim-bpf          train one network (as sims/run.py)
    bioplaus sweep --recipes ... --out-dir DIR  recipes x seeds, each an ordinary run (as sims/sweep.py)
    bioplaus report DIR [--layout paper]        the table of a sweep's logs (as sims/sweep.py --report)
    bioplaus figures [--logs ...]               the README's figures (as sims/figures.py)
    bioplaus describe [flags] [--config]        a run's network and parameter count, or its configuration as TOML
    bioplaus recipes [PATTERN ...]              the paper's recipes (as sims/run.py --list-recipes)
    bioplaus --version

``python -m bioplaus ...`` is the same command; ``bioplaus-run`` stays as an alias of ``bioplaus run``;
the checkout's ``sims/*.py`` are thin wrappers over the same functions. Every message names the command
the user typed (:mod:`bioplaus.program`). Output cut short by its reader (``bioplaus recipes | head``)
ends the command quietly with status 141, as a program stopped by SIGPIPE would, with no traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence

import bioplaus
from bioplaus.errors import sentence
from bioplaus.program import Program

EXIT_USAGE, EXIT_BROKEN_PIPE = 2, 141  # 141 = 128 + SIGPIPE: what a shell reports for a closed pipe

COMMANDS = {
    "run": "train one network and log every epoch to HDF5",
    "sweep": "run recipes (and flag grids) x seeds, each an ordinary run with its own log",
    "report": "the results table (.md, .csv, .png) of a folder of logs",
    "figures": "draw the README's figures (training small runs, or from --logs)",
    "describe": "print a run's network and parameter count, or with --config its configuration as TOML",
    "recipes": "list the paper's recipes (or those matching glob patterns)",
}


def _help(prefix: str) -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prefix} [--version] COMMAND [ARGS ...]", "",
             "bioplaus: backprop-free, biologically plausible local learning (Nøkland & Eidnes, ICML 2019).", "",
             "commands:"]
    lines += [f"  {name:{width}s}  {text}" for name, text in COMMANDS.items()]
    lines += ["", f"{prefix} COMMAND --help says more about each."]
    return "\n".join(lines)


def _report(argv: Sequence[str], program: Program) -> int:
    """``bioplaus report DIR [--layout recipes|paper]``: the sweep's ``--report``."""
    import argparse

    from bioplaus.sweep import SweepError
    from bioplaus.sweep import main as sweep_main

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise SweepError(message)

    p = Parser(prog=program.report, description="Write DIR/results.md, .csv and .png from the run logs in DIR "
               "and print the table.")
    p.add_argument("dir", metavar="DIR", help="a folder of run logs (a sweep's --out-dir)")
    p.add_argument("--layout", choices=("recipes", "paper"), default="recipes",
                   help="one row per recipe and setting, or the paper's models x variants (default: recipes)")
    try:
        ns = p.parse_args(list(argv))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except SweepError as exc:
        print(f"error: {sentence(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    # the sweep's own --report does the work (its checks, marks and exit statuses)
    return sweep_main(["--report", ns.dir, "--layout", ns.layout], program=program)


def dispatch(argv: Sequence[str], prefix: str = "bioplaus", program: Program | None = None) -> int:
    """Run ``prefix COMMAND ARGS``; returns the exit status."""
    argv = list(argv)
    program = program or Program.command(prefix)
    if not argv:
        print(f"error: {prefix} needs a command: {', '.join(COMMANDS)} ({prefix} --help says what each does).",
              file=sys.stderr)
        return EXIT_USAGE
    head, rest = argv[0], argv[1:]
    if head in ("-h", "--help"):
        print(_help(prefix))
        return 0
    if head == "--version":
        print(f"bioplaus {bioplaus.__version__}")
        return 0
    if head == "run":
        from bioplaus.cli import main

        return main(rest, program)
    if head == "describe":
        from bioplaus.cli import describe_main

        return describe_main(rest, program)
    if head == "recipes":
        return _recipes(rest, program)
    if head == "sweep":
        from bioplaus.sweep import main as sweep_main

        return sweep_main(rest, program=program)
    if head == "report":
        return _report(rest, program)
    if head == "figures":
        from bioplaus.figures import main as figures_main

        return figures_main(rest, prog=program.figures)
    close = difflib.get_close_matches(head, list(COMMANDS), n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; choose {', '.join(COMMANDS)}"
    print(f"error: {sentence(f'unknown command {head!r}{hint}')}", file=sys.stderr)
    return EXIT_USAGE


def _recipes(argv: Sequence[str], program: Program) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {program.recipes} [PATTERN ...]\n\nEvery recipe of the paper (or those matching the glob "
              "patterns) with its epochs, learning rate and the paper's test error.")
        return 0
    options = [a for a in argv if a.startswith("-")]
    if options:
        print(f"error: {program.recipes} takes recipe names or glob patterns, not {options[0]}.", file=sys.stderr)
        return EXIT_USAGE
    import fnmatch

    from bioplaus.cli import list_recipes
    from bioplaus.recipes import list_recipes as names

    for pattern in argv:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names()):
            print(f"error: no recipe matches {pattern!r}; {program.recipes} lists them all.", file=sys.stderr)
            return EXIT_USAGE
    return list_recipes(argv)


def quietly(entry: Callable[[], int]) -> int:
    """``entry()``, ended quietly when the reader of its output goes away (``| head``): no BrokenPipeError
    traceback, status 141. For the programs' entry points (the console scripts, ``python -m``, sims/*.py)."""
    try:
        status = entry()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # Python flushes stdout once more at exit; point it at /dev/null so that flush cannot fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE


# The module each command's work lives in: imported first, while the signal handlers only note a signal
# (bioplaus.startup), so that no import is ever cut by one.
MODULES = {"run": "bioplaus.cli", "describe": "bioplaus.cli", "recipes": "bioplaus.cli", "sweep": "bioplaus.sweep",
           "report": "bioplaus.sweep", "figures": "bioplaus.figures"}


def started(argv: Sequence[str], prefix: str) -> int:
    """:func:`dispatch` as a program: its command's module imported with the signal handlers in place
    (:func:`bioplaus.startup.command`: SIGINT or SIGTERM at any moment is status 130 and one line)."""
    from bioplaus.startup import command

    return command(MODULES.get(argv[0] if argv else "", __name__), lambda _main: dispatch(argv, prefix))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bioplaus`` console script."""
    return quietly(lambda: started(sys.argv[1:] if argv is None else list(argv), "bioplaus"))


def run_alias(argv: Sequence[str] | None = None) -> int:
    """The ``bioplaus-run`` console script: ``bioplaus run``, named as typed."""
    from bioplaus.startup import command

    program = Program.command("bioplaus").with_run("bioplaus-run")
    return quietly(lambda: command("bioplaus.cli", lambda run_main: run_main(sys.argv[1:] if argv is None else argv,
                                                                            program)))
