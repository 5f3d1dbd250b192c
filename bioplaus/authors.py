"""The authors' command-line flags (anokland/local-loss, ``train.py``), read as bioplaus's own.

A command line copied from the authors' scripts runs here with the same meaning, and the run says
once, on stderr, what each of their flags became::

    --loss-sup pred|sim|predsim     --variant pred|sim|predsim
    ... with --bio                  --variant pred-bpf|sim-bpf|predsim-bpf   (--bio alone: predsim-bpf,
                                                                              their default --loss-sup)
    ... with --no-detach            --variant glob+pred|glob+sim|glob+predsim
    --backprop                      --variant glob
    --length PX                     --cutout-length PX        (--n_holes 1, the only one, is accepted)
    --no-cuda                       --device cpu
    --dataset CIFAR10 (and their other names)   --dataset cifar10
    --progress-bar, --no-print-stats            nothing: bars are on (--no-progress), the log holds every
                                                layer's statistics

Their flags with no equivalent (``--pre-act``, ``--save-dir``, ``--n_holes`` other than 1, ``--bio``
with ``--no-detach`` or ``--backprop``) are refused with one sentence that names what to use instead.
The flags both programs share (``--model``, ``--lr``, ``--beta``, ...) need no translation. One
difference stays: their ``--bio`` runs keep β = 0.99 unless told, while bioplaus's predsim-bpf defaults
to the 0.01 of their published runs; the note says so.
"""

from __future__ import annotations

from collections.abc import Sequence

from bioplaus.errors import ConfigError

DATASETS = {"MNIST": "mnist", "FashionMNIST": "fashion-mnist", "KuzushijiMNIST": "kmnist", "CIFAR10": "cifar10",
            "CIFAR100": "cifar100", "SVHN": "svhn", "STL10": "stl10"}
LOSS_SUP = ("pred", "sim", "predsim")
_SWITCHES = ("--bio", "--backprop", "--no-detach", "--no-cuda", "--progress-bar", "--no-print-stats", "--pre-act")
_VALUED = ("--loss-sup", "--length", "--n_holes", "--save-dir")


def _split(argv: Sequence[str]) -> list[tuple[str, str | None, int]]:
    """Each authors' flag in ``argv`` as (flag, value or None, how many items it takes)."""
    found, i = [], 0
    while i < len(argv):
        item = argv[i]
        if item == "--":
            break
        name, eq, value = item.partition("=")
        if name in _VALUED:
            if eq:
                found.append((name, value, 1))
            elif i + 1 < len(argv):
                found.append((name, argv[i + 1], 2))
                i += 1
            else:
                raise ConfigError(f"the authors' {name} needs a value")
        elif item in _SWITCHES:
            found.append((item, None, 1))
        i += 1
    return found


def translate(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """``argv`` with the authors' flags replaced by bioplaus's, and the note that says how (None when
    there were none). Raises ConfigError for a flag with no equivalent or a contradiction."""
    argv = list(argv)
    flags = _split(argv)
    dataset_note = None
    for i, item in enumerate(argv[:-1]):
        if item == "--dataset" and argv[i + 1] in DATASETS:
            dataset_note = f"--dataset {argv[i + 1]} -> --dataset {DATASETS[argv[i + 1]]}"
            argv[i + 1] = DATASETS[argv[i + 1]]
    for i, item in enumerate(argv):
        name, eq, value = item.partition("=")
        if name == "--dataset" and eq and value in DATASETS:
            dataset_note = f"--dataset {value} -> --dataset {DATASETS[value]}"
            argv[i] = f"--dataset={DATASETS[value]}"
    if not flags:
        return argv, (f"note: the authors' {dataset_note}" if dataset_note else None)
    given = {name: value for name, value, _ in flags}
    out: list[str] = []
    skip = 0
    for i, item in enumerate(argv):  # drop the authors' flags (and their values) in place
        if skip:
            skip -= 1
            continue
        name = item.partition("=")[0]
        if name in _VALUED or item in _SWITCHES:
            skip = 0 if "=" in item or item in _SWITCHES else 1
            continue
        out.append(item)
    said, extra = [], []
    refusals = {"--pre-act": ("it is for the authors' ResNets, which bioplaus does not have; use --model mlp, "
                              "vgg8b, vgg11b or another of --model's choices"),
                "--save-dir": ("a run writes one log file: give its path with --out PATH.h5 (its checkpoint goes "
                               "beside it)")}
    for refused, instead in refusals.items():
        if refused in given:
            raise ConfigError(f"the authors' {refused} has no equivalent here: {instead}")
    if "--n_holes" in given:
        if given["--n_holes"] != "1":
            raise ConfigError(f"the authors' --n_holes {given['--n_holes']} has no equivalent here: cutout makes one "
                              "hole (--cutout --cutout-length PX)")
        said.append("--n_holes 1 -> (one hole, as always)")
    if "--length" in given:
        extra += ["--cutout-length", given["--length"]]
        said.append(f"--length {given['--length']} -> --cutout-length {given['--length']}")
    if "--no-cuda" in given:
        extra += ["--device", "cpu"]
        said.append("--no-cuda -> --device cpu")
    for quiet, why in (("--progress-bar", "progress bars are on unless --no-progress"),
                       ("--no-print-stats", "the epoch line is short, and the log holds every layer's statistics")):
        if quiet in given:
            said.append(f"{quiet} -> nothing ({why})")
    variant_flags = [f for f in ("--loss-sup", "--bio", "--backprop", "--no-detach") if f in given]
    if variant_flags:
        variant, typed, note = _variant(given, argv)
        if any(a == "--variant" or a.startswith("--variant=") for a in out):
            raise ConfigError(f"give either --variant or the authors' {typed}, not both")
        extra += ["--variant", variant]
        said.insert(0, f"{typed} -> --variant {variant}{note}")
    if dataset_note:
        said.append(dataset_note)
    return out + extra, "note: the authors' flags, read as bioplaus's: " + "; ".join(said)


def _variant(given: dict[str, str | None], argv: Sequence[str]) -> tuple[str, str, str]:
    """(variant, the authors' flags as typed, a remark) for --loss-sup, --bio, --backprop, --no-detach."""
    sup = given.get("--loss-sup")
    typed = " ".join([*([f"--loss-sup {sup}"] if sup is not None else []),
                      *(f for f in ("--bio", "--backprop", "--no-detach") if f in given)])
    if sup is not None and sup not in LOSS_SUP:
        raise ConfigError(f"the authors' --loss-sup takes pred, sim or predsim, not {sup!r}")
    bio = "--bio" in given
    if "--backprop" in given:
        if bio or "--no-detach" in given:
            raise ConfigError(f"the authors' {typed} has no equivalent here: use --variant glob (backprop), or fa, "
                              "sign-symmetry or kolen-pollack for backprop without transposed weights")
        return "glob", typed, " (--loss-sup is unused, as in the authors' code)" if sup else ""
    sup = sup or "predsim"  # the authors' default
    if "--no-detach" in given:
        if bio:
            raise ConfigError(f"the authors' {typed} has no equivalent here: use --variant glob+{sup} (global "
                              f"backprop plus the local losses) or --variant {sup}-bpf")
        return f"glob+{sup}", typed, ""
    if bio:
        beta = any(a == "--beta" or a.startswith("--beta=") for a in argv)
        note = "" if sup != "predsim" or beta else (" (beta 0.01, as in the authors' published runs; their train.py "
                                                    "defaults to 0.99: add --beta 0.99 for that)")
        return f"{sup}-bpf", typed, note
    return sup, typed, ""
