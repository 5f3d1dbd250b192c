"""The command line of ``bioplaus run`` (and ``bioplaus describe``, ``sims/run.py``, ``bioplaus-run``): it
parses, hands the run to :mod:`bioplaus.runner`, and prints.

Configuration precedence: Config defaults < ``--recipe NAME`` (or ``--config-from RUN.h5``) < ``--config
FILE.toml`` < the flags the user typed (argparse defaults are suppressed, so only typed flags are seen;
:mod:`bioplaus.settings` layers them). The authors' own flags are read first (:mod:`bioplaus.authors`). Bad input of any kind gets one sentence on
stderr starting ``error: ``, exit status 2, and nothing is written: every check (flags, recipe,
configuration, model, dataset, memory, device, output path, data files, resume consistency) runs
before the log is created.

Exit statuses: 0 done, 1 diverged, 2 bad input, 74 the disk is full or failing (the log keeps
every completed epoch; resume once there is room), 130 interrupted (SIGINT/SIGTERM; the log is
marked ``interrupted`` and ``--resume`` continues from the last completed epoch).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from bioplaus import files, runner
from bioplaus.config import Config, ConfigError, unset_meaning
from bioplaus.errors import sentence
from bioplaus.program import DEFAULT as DEFAULT_PROGRAM
from bioplaus.program import Program
from bioplaus.rules import VARIANTS
from bioplaus.runner import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, KEEP_CHECKPOINT, BadInput
from bioplaus.startup import is_parallel_follower

EXIT_DIVERGED, EXIT_STORAGE = runner.EXIT_DIVERGED, runner.EXIT_STORAGE
RESUME_MAY_CHANGE = runner.RESUME_MAY_CHANGE


class UsageError(Exception):
    """Bad input; ``str(e)`` is the sentence shown after ``error: ``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors -> our one-sentence form
        raise UsageError(message)


def _stage_list(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--stages takes block counts such as 3,2,2, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--stages takes block counts of 1 or more, not {text!r}")
    return sizes


SHOW_TOML = "show"  # ``describe --config`` without a file: print the configuration as TOML


def build_parser(prog: str = DEFAULT_PROGRAM.run, describe: bool = False) -> argparse.ArgumentParser:
    """The argument parser; config flags have no defaults (only typed flags appear), and their help shows
    the Config's defaults. ``describe``: the parser of ``bioplaus describe`` (``--config`` takes an
    optional file and prints TOML)."""
    p = _Parser(
        prog=prog,
        description=("Print a run's network and parameter count, or with --config its resolved configuration as "
                     "TOML; nothing is trained and no data is read." if describe else
                     "Train a network with local (or backprop-free) learning rules and log every epoch to HDF5."),
        argument_default=argparse.SUPPRESS,
    )
    cfg = p.add_argument_group("run configuration (defaults < --recipe < --config FILE < these flags)")
    add = cfg.add_argument
    add("--variant", metavar="NAME", help="the learning rule (see --list-variants): " + ", ".join(VARIANTS))
    add("--model", metavar="NAME", help="mlp, vgg8b, vgg11b, ...")
    add("--dataset", metavar="NAME", help="fashion-mnist-mini (embedded), mnist, fashion-mnist, kmnist, "
        "cifar10, cifar100, svhn, stl10")
    add("--epochs", type=int, metavar="N")
    add("--batch-size", dest="batch_size", type=int, metavar="N")
    add("--lr", type=float, metavar="LR", help="initial learning rate")
    add("--lr-decay-milestones", dest="lr_decay_milestones", type=int, nargs="*", metavar="EPOCH",
        help="epochs after which the learning rate is multiplied by --lr-decay-fact, each below --epochs (none: a "
             "constant rate)")
    add("--lr-decay-fact", dest="lr_decay_fact", type=float, metavar="F")
    add("--optim", metavar="NAME", help="adam, amsgrad or sgd")
    add("--momentum", type=float, metavar="M", help="SGD momentum")
    add("--weight-decay", dest="weight_decay", type=float, metavar="W")
    add("--dropout", type=float, metavar="P")
    add("--nonlin", metavar="NAME", help="relu or leakyrelu")
    add("--beta", type=float, metavar="B", help="weight of the sim loss in predsim variants")
    add("--num-layers", dest="num_layers", type=int, metavar="N", help="dense blocks (after the convs for vgg)")
    add("--num-hidden", dest="num_hidden", type=int, metavar="N", help="units per dense block")
    add("--feat-mult", dest="feat_mult", type=float, metavar="K", help="channel multiplier (vgg only)")
    add("--dim-in-decoder", dest="dim_in_decoder", type=int, metavar="N")
    add("--target-proj-size", dest="target_proj_size", type=int, metavar="N")
    add("--no-batch-norm", dest="batch_norm", action="store_const", const=False)
    add("--cutout", action="store_const", const=True)
    add("--cutout-length", dest="cutout_length", type=int, metavar="PX")
    add("--classes-per-batch", dest="classes_per_batch", type=int, metavar="N")
    add("--classes-per-batch-until-epoch", dest="classes_per_batch_until_epoch", type=int, metavar="EPOCH")
    add("--seed", type=int, metavar="S")
    add("--device", metavar="NAME", help="auto, cpu or gpu")
    add("--conv-algorithm", dest="conv_algorithm", metavar="NAME",
        help="3x3 convolutions by im2col + one GEMM, or by winograd (F(4x4, 3x3): fewer multiplications, "
             "float32 results within about 1e-5); auto (default): per device the faster, recorded as what it "
             "resolved to (the CPU's rule auto-cpu-2: winograd from 16 channels where its 4x4 tiles save 2x the "
             "multiplications, im2col elsewhere; winograd on a GPU)")
    add("--data-dir", dest="data_dir", metavar="DIR")
    add("--loss-unsup", dest="loss_unsup", metavar="KIND", help="none, sim or recon: an unsupervised local loss "
        "in every block (the authors' switch), weighted by --alpha")
    add("--alpha", type=float, metavar="A", help="weight of the unsupervised local loss (the supervised get 1 - A)")
    add("--no-similarity-std", dest="no_similarity_std", action="store_const", const=True,
        help="similarity matrices of flattened feature maps, not of per-channel standard deviations")
    add("--probe-every", dest="probe_every", type=int, metavar="K",
        help="every K epochs, log the angle to backprop and similarity matrices on a probe batch")
    _show_defaults(cfg)

    files = p.add_argument_group("configuration files")
    if describe:
        files.add_argument("--config", nargs="?", const=SHOW_TOML, metavar="FILE.toml",
                           help="print the resolved configuration as TOML (that --config reads back), read from "
                                "FILE.toml when given and the flags above")
    else:
        files.add_argument("--config", metavar="FILE.toml", help="read the run's configuration from a TOML file "
                           "(keys: the flags above with underscores, and recipe); the flags typed win")
    files.add_argument("--config-from", dest="config_from", metavar="RUN.h5",
                       help="repeat the configuration of a logged run (a new run, not a resume)")

    run = p.add_argument_group("what to do")
    run.add_argument("--recipe", metavar="NAME", help="one of the paper's runs (see --list-recipes)")
    run.add_argument("--list-recipes", dest="list_recipes", action="store_true")
    run.add_argument("--list-variants", dest="list_variants", action="store_true",
                     help="list the learning rules with a line each and their references")
    if not describe:
        run.add_argument("--out", metavar="PATH.h5", help="run log (default: runs/<variant>-<model>-<dataset>-<time>.h5)")
        run.add_argument("--overwrite", action="store_true", help="replace an existing --out log")
        run.add_argument("--resume", metavar="PATH.h5", help="continue an interrupted run from its last checkpoint")
        run.add_argument("--describe", action="store_true", help="print the model and its parameter count, then exit")
        run.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
        run.add_argument("--tensorboard", metavar="DIR", help="after every epoch, write the log's series as "
                         "TensorBoard events to DIR/<log name>/ (needs bioplaus[tensorboard])")
        run.add_argument("--threads", type=int, metavar="N",
                         help="BLAS and element-wise threads of this process (default: the cores this process may "
                              "use / the processes of this run on this host; an OMP_NUM_THREADS, "
                              "OPENBLAS_NUM_THREADS or MKL_NUM_THREADS in the environment is kept)")
        run.add_argument("--keep-checkpoint", dest="keep_checkpoint", choices=KEEP_CHECKPOINT,
                         help="which checkpoints stay beside the log: last (default; extend a completed run with "
                              "--resume --epochs), none (removed when the run completes; an interrupted run keeps "
                              "it) or all (one per epoch as well)")
    par = p.add_argument_group(f"layer-parallel training (mpiexec -n K {prog} --parallel layers ...)")
    par.add_argument("--parallel", metavar="layers", choices=["layers"],
                     help="train the network's stages on the MPI ranks at once (local rules only)")
    par.add_argument("--stages", metavar="N,N,...", type=_stage_list,
                     help="blocks per rank, in order (default: balanced by estimated cost)")
    par.add_argument("--ranks", metavar="K", type=int, help="with --describe: show the split over K ranks")
    return p


def _default_text(name: str, const: Any = None, is_switch: bool = False) -> str:
    """The default of a Config field as its flag's help shows it, read from the Config itself."""
    value = getattr(Config(), name)
    if is_switch:
        return "on" if value == const else "off"
    if value is None:
        return unset_meaning(name, "none")
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _show_defaults(group: argparse._ArgumentGroup) -> None:
    """Append ``(default: ...)`` to every configuration flag's help, from the Config's defaults."""
    for action in group._group_actions:
        switch = isinstance(action, argparse._StoreConstAction)
        text = _default_text(action.dest, action.const, switch)
        action.help = f"{action.help} (default: {text})" if action.help else f"(default: {text})"


_ACTION_KEYS = {"recipe", "list_recipes", "list_variants", "out", "overwrite", "resume", "describe", "no_progress",
                "parallel", "stages", "ranks", "config", "config_from", "threads", "keep_checkpoint", "tensorboard"}


def _config_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The configuration fields the user typed."""
    return {k: v for k, v in vars(ns).items() if k not in _ACTION_KEYS}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# ---------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None, program: Program | None = None) -> int:
    """Run the command line; returns the exit status. ``program``: how the user started it (the
    messages quote it; default ``python sims/run.py``)."""
    return _main(argv, program or DEFAULT_PROGRAM, describe=False)


def describe_main(argv: Sequence[str] | None = None, program: Program | None = None) -> int:
    """``bioplaus describe``: the network of a configuration and its parameter count (with ``--parallel
    layers --ranks K`` its split), or with ``--config`` the resolved configuration as TOML."""
    return _main(argv, program or DEFAULT_PROGRAM, describe=True)


def _main(argv: Sequence[str] | None, program: Program, describe: bool) -> int:
    from bioplaus import authors

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            argv, note = authors.translate(argv)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        try:
            ns = build_parser(program.describe if describe else program.run, describe).parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        # describe (the subcommand or --describe) trains nothing, also with --parallel layers under mpiexec
        parallel = getattr(ns, "parallel", None) and not (describe or getattr(ns, "describe", False))
        if note and not parallel:  # (under MPI, rank 0 alone says it)
            print(note, file=sys.stderr, flush=True)
        show_toml = describe and getattr(ns, "config", None) is not None
        if describe:
            ns.describe = True
        if getattr(ns, "list_recipes", False):
            return list_recipes()
        if getattr(ns, "list_variants", False):
            from bioplaus.rules import describe_rules

            print(describe_rules())
            return EXIT_OK
        if parallel:
            from bioplaus.parallel import main_parallel

            # refuses --ranks (and any bad input) on rank 0 alone
            return main_parallel(ns, _config_flags(ns), program, note, new_config=new_config)
        if getattr(ns, "threads", None) is not None:
            runner.choose_threads(ns.threads)  # a bad count is refused before anything else
        if getattr(ns, "ranks", None) is not None and not getattr(ns, "describe", False):
            from bioplaus.parallel import RANKS_ONLY_WITH_DESCRIBE

            raise UsageError(RANKS_ONLY_WITH_DESCRIBE)
        if getattr(ns, "stages", None) is not None and not getattr(ns, "parallel", None):
            raise UsageError("--stages needs --parallel layers")
        runner.check_tensorboard(getattr(ns, "tensorboard", None))
        if getattr(ns, "resume", None) is not None:
            prepared = _prepare_resume(ns, program)
        else:
            prepared = _prepare_new(ns, program, show_toml)
        if prepared is None:  # --describe
            return EXIT_OK
        with runner.tensorboard_hook(getattr(ns, "tensorboard", None), prepared.out) as on_epoch:
            result = runner.execute(prepared, progress=_progress(ns), echo=lambda line: print(line, flush=True),
                                    on_epoch=on_epoch)
    except (UsageError, BadInput) as exc:
        if not is_parallel_follower(argv):  # every rank of --parallel parses the same flags: rank 0 says it
            print(f"error: {sentence(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a disk that filled while the data downloaded: nothing else was written
        if not files.is_storage_failure(exc):
            raise
        print(f"error: {sentence(exc.strerror or str(exc))}", file=sys.stderr)
        return EXIT_STORAGE
    return result.exit_code


def list_recipes(patterns: Sequence[str] = ()) -> int:
    """Print every recipe (or those matching the glob ``patterns``) with its epochs, lr, the paper's error, and
    the paper's parameter count beside ours (the forward network's, as ``--describe`` counts it)."""
    import fnmatch

    from bioplaus.data import get_spec
    from bioplaus.models import build_spec
    from bioplaus.recipes import get_recipe, recipe_rows

    for row in recipe_rows():
        if patterns and not any(fnmatch.fnmatchcase(row["name"], p) for p in patterns):
            continue
        err = row.get("paper_test_error")
        paper = f"paper {err:.2f}%" if err is not None else "paper -"
        data = get_spec(row["dataset"])
        ours = build_spec(Config.from_dict(get_recipe(row["name"])).resolve(), tuple(data.input_shape),
                          data.num_classes).num_parameters
        params = f"params paper {row.get('paper_params') or '-'}, ours {ours / 1e6:.1f}M"
        print(f"{row['name']:40s} {row['epochs']:4d} epochs  lr {row['lr']:.0e}  {paper:13s}  {params}")
    return EXIT_OK


def new_config(ns: argparse.Namespace):
    """The layered configuration of a new run (:func:`bioplaus.runner.new_config`) from the parsed flags."""
    config = getattr(ns, "config", None)
    return runner.new_config(_config_flags(ns), getattr(ns, "recipe", None),
                             None if config in (None, SHOW_TOML) else config, getattr(ns, "config_from", None))


def _prepare_new(ns: argparse.Namespace, program: Program, show_toml: bool = False):
    layered = new_config(ns)
    cfg = layered.config
    if show_toml:
        print(config_toml(layered, ns, program), end="")
        return None
    if getattr(ns, "describe", False):
        from bioplaus.describe import describe_model

        spec = runner.dataset_spec(cfg)
        try:
            text = describe_model(cfg, tuple(spec.input_shape), spec.num_classes)
        except ConfigError as exc:
            raise UsageError(runner._one(exc)) from exc
        if getattr(ns, "parallel", None):
            from bioplaus.parallel import describe_parallel

            text = describe_parallel(cfg, spec, getattr(ns, "ranks", None), getattr(ns, "stages", None)) + "\n" + text
        print(text)
        return None
    return runner.prepare(cfg, getattr(ns, "out", None), getattr(ns, "overwrite", False),
                          recipe=layered.recipe, schedule=layered.schedule, threads=getattr(ns, "threads", None),
                          keep_checkpoint=getattr(ns, "keep_checkpoint", "last"), program=program,
                          progress=_progress(ns))


def config_toml(layered, ns: argparse.Namespace, program: Program) -> str:
    """The resolved configuration as a TOML file that ``--config`` reads back to the same Config."""
    import bioplaus
    from bioplaus.settings import to_toml

    sources = [f"recipe {layered.recipe}" if layered.recipe else None,
               f"the run logged in {ns.config_from}" if getattr(ns, "config_from", None) else None,
               ns.config if getattr(ns, "config", SHOW_TOML) != SHOW_TOML else None,
               "the flags" if _config_flags(ns) else None]
    made = ", ".join(s for s in sources if s) or "the defaults"
    header = [f"bioplaus {bioplaus.__version__}: a run's resolved configuration, from {made}",
              f"train it: {program.run} --config FILE.toml  (flags typed after it win)",
              f"lr schedule: {layered.config.schedule_text()} ({layered.schedule})", ""]
    return to_toml(layered.config, header)


def _prepare_resume(ns: argparse.Namespace, program: Program):
    for key in ("recipe", "out", "overwrite", "describe", "config", "config_from"):
        if getattr(ns, key, None):
            raise UsageError(f"{_flag(key)} cannot be combined with --resume (the log holds the run's configuration)")
    return runner.prepare_resume(ns.resume, _config_flags(ns), threads=getattr(ns, "threads", None),
                                 keep_checkpoint=getattr(ns, "keep_checkpoint", None), program=program,
                                 progress=_progress(ns))


def _progress(ns: argparse.Namespace) -> bool:
    """Progress bars (the epochs', a download's) unless ``--no-progress``."""
    return not getattr(ns, "no_progress", False)
