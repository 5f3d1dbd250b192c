"""Where a run's configuration comes from, and the TOML form of it that a user can keep.

Each layer overrides the one below it::

    the flags typed  >  --config FILE.toml  >  --recipe NAME or --config-from RUN.h5  >  the Config defaults

:func:`layered` builds the resolved Config from them (a recipe may also be named in the file, as
``recipe = "..."``). The learning-rate schedule is the one setting that depends on another: the
default follows ``epochs`` (:func:`bioplaus.config.default_milestones`), and a recipe's (or a logged
run's) milestones, given another number of epochs by a layer above it, are scaled as fractions of its
own epochs, so ``--recipe X --epochs 10`` keeps the shape of X's schedule. Milestones typed in a file
or a flag are taken as they are, and refused when one is not below the run's epochs. The header of a
run says once where its schedule came from.

A run's configuration file holds the Config fields at its top level, named like the flags with
underscores (``lr_decay_milestones = [25, 38]``; dashes are read too), and optionally ``recipe``;
:func:`to_toml` writes a resolved Config in that form (``bioplaus describe --config``), which
:func:`read_run_file` reads back to the same Config. A sweep's file has a ``[sweep]`` table (its own
options) and a ``[run]`` table (every run's settings; see :mod:`bioplaus.sweep.cli`).

Bad input of every kind is a :class:`~bioplaus.errors.ConfigError` with one sentence: a file that is
missing, a folder, a FIFO or another special file (never opened), larger than 1 MiB, unreadable, not
UTF-8, not valid TOML, or with a key that is not a setting (named, with the closest ones).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from bioplaus.config import Config, ConfigError, scale_milestones, unset_meaning

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (a conditional dependency)
    import tomli as tomllib

MAX_FILE_BYTES = 1 << 20  # a configuration is a few hundred bytes; anything this large is not one
RUN_FILE_KEYS = ("recipe",)  # keys of a run's file beside the Config fields


# ------------------------------------------------------------------------------ reading files
def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: str, flag: str, what: str) -> os.stat_result:
    """The stat of the regular file at ``path`` (a link to one will do); ConfigError (one sentence naming
    ``flag``) for anything else. Nothing is opened (a FIFO would block)."""
    if not path or not path.strip():
        raise ConfigError(f"{flag} needs the path of {what}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {(exc.strerror or str(exc)).lower()}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{flag} {path} is {_file_kind(st.st_mode)}, not {what}")
    return st


def read_bytes(path: str, flag: str, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path`` (see :func:`check_regular`), at most ``limit`` of them."""
    st = check_regular(path, flag, what)
    if st.st_size > limit:
        raise ConfigError(f"{flag} {path} is {st.st_size:,} bytes, larger than {what} can be ({limit:,} at most)")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # replaced since the stat: still never read
                raise ConfigError(f"{flag} {path} is not a regular file, not {what}")
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {flag} {path}: {(exc.strerror or str(exc)).lower()}") from None
    if len(data) > limit:
        raise ConfigError(f"{flag} {path} is larger than {what} can be ({limit:,} bytes at most)")
    return data


def read_toml(path: str, flag: str = "--config") -> dict[str, Any]:
    """The TOML document at ``path`` as a dict (see the module docstring for what is refused)."""
    data = read_bytes(path, flag, "a TOML configuration file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} {path} is not UTF-8 text, so not a TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{flag} {path} is not valid TOML: {exc}") from None
    except RecursionError:  # arrays or tables nested thousands deep: the parser recurses (a crafted file)
        raise ConfigError(f"{flag} {path} nests its values too deeply to be a configuration") from None


def _closest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def config_values(table: Mapping[str, Any], path: str, where: str = "", extra: Sequence[str] = ()) -> dict[str, Any]:
    """The Config fields of a TOML table, checked: every key a field (or in ``extra``), dashes read as
    underscores, each value of the field's type. ConfigError names the key and the file."""
    fields = Config.field_names()
    place = f"{where} in {path}" if where else path
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in fields and name not in extra:
            if isinstance(value, dict):
                raise ConfigError(f"{path} has a [{key}] table, and {place} takes settings only (the run flags' "
                                  f"names with underscores, such as lr or lr_decay_milestones){_closest(name, fields)}")
            raise ConfigError(f"unknown key {key!r} in {place}{_closest(name, [*fields, *extra])} (the keys are the "
                              "run flags' names with underscores, such as lr or lr_decay_milestones)")
        if name in out:
            raise ConfigError(f"{path} gives {name} twice (as {name} and with dashes)")
        if name in extra:
            out[name] = value
            continue
        try:
            Config.from_dict({name: value})
        except ConfigError as exc:
            raise ConfigError(f"{name} in {path}: {exc}") from None
        out[name] = value
    return out


def read_run_file(path: str, flag: str = "--config") -> tuple[str | None, dict[str, Any]]:
    """``(recipe, Config fields)`` of a run's configuration file."""
    doc = read_toml(path, flag)
    if "sweep" in doc and isinstance(doc["sweep"], dict):
        raise ConfigError(f"{path} has a [sweep] table: it configures a sweep; give it to the sweep's --config")
    values = config_values(doc, path, extra=RUN_FILE_KEYS)
    recipe = values.pop("recipe", None)
    if recipe is not None and not isinstance(recipe, str):
        raise ConfigError(f"recipe in {path} takes a recipe's name, not {recipe!r}")
    return recipe, values


def read_logged_config(path: str, flag: str = "--config-from") -> Config:
    """The configuration a run log holds (a new run repeats it)."""
    from bioplaus.log import LogError, read_run

    check_regular(path, flag, "a bioplaus run log")
    try:
        return read_run(path).config
    except LogError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


# ------------------------------------------------------------------------------ the layers
@dataclasses.dataclass(frozen=True)
class Layered:
    """A new run's resolved configuration and where its schedule came from (for the header)."""

    config: Config
    schedule: str
    recipe: str | None = None


def layered(flags: Mapping[str, Any], file_values: Mapping[str, Any] | None = None, recipe: str | None = None,
            logged: Config | None = None, logged_path: str | None = None, file_path: str | None = None) -> Layered:
    """Config defaults < ``recipe`` or ``logged`` (a run log's configuration) < ``file_values`` < ``flags``,
    resolved. ConfigError (one sentence) for any bad value or combination."""
    if recipe is not None and logged is not None:
        raise ConfigError(f"--config-from {logged_path} holds a whole configuration; it cannot be combined with a "
                          f"recipe ({recipe})")
    file_values = dict(file_values or {})
    base, base_name = None, ""
    if recipe is not None:
        from bioplaus.recipes import get_recipe

        base, base_name = Config.from_dict(get_recipe(recipe)), f"recipe {recipe}"
    elif logged is not None:
        base, base_name = logged, f"the run logged in {logged_path}"
    cfg = Config.from_dict(file_values, base=base)
    cfg = Config.from_dict(dict(flags), base=cfg)
    typed = "lr_decay_milestones" in flags or "lr_decay_milestones" in file_values
    if typed:
        where = "as given" if "lr_decay_milestones" in flags else f"as given in {file_path}"
    elif base is not None and base.lr_decay_milestones is not None:
        if cfg.epochs != base.epochs:
            old = " ".join(map(str, base.lr_decay_milestones)) or "none"
            new = scale_milestones(base.lr_decay_milestones, base.epochs, cfg.epochs)
            cfg = dataclasses.replace(cfg, lr_decay_milestones=new)
            where = f"scaled from {base_name}: {old} of its {base.epochs} epochs"
        else:
            where = f"from {base_name}"
    else:
        cfg = dataclasses.replace(cfg, lr_decay_milestones=None)
        where = "the default: after 1/2, 3/4, 7/8 and 15/16 of the epochs"
    cfg = cfg.resolve()
    if typed:
        cfg.check_milestones_below_epochs()
    return Layered(cfg, where, recipe)


# ------------------------------------------------------------------------------ writing TOML
def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:  # an undecodable byte of a path: TOML cannot hold it
            raise ConfigError(f"{text!r} cannot be written in TOML (it is not valid Unicode)")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """One value in TOML: true/false, integers, floats (shortest exact form), strings, arrays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{value} cannot be a setting")
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ConfigError(f"{value!r} cannot be written in TOML")


def to_toml(cfg: Config, header: Sequence[str] = ()) -> str:
    """``cfg`` as a run's configuration file (every field, in the Config's order; a field that is None,
    i.e. left to its default, as a comment)."""
    lines = [f"# {line}" if line else "#" for line in header]
    for f in dataclasses.fields(Config):
        value = getattr(cfg, f.name)
        if value is None:
            lines.append(f"# {f.name} is not set: {unset_meaning(f.name, 'its default')}")
        else:
            lines.append(f"{f.name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"
