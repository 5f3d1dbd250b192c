"""The paper's training recipes, as data: one named row per run behind the paper's tables.

``bioplaus/recipes.json`` is the project's copy of the authors' experiment script
(anokland/local-loss, ``run_experiments.sh``), one row per run, each with

- a readable unique ``name``: ``<dataset>-<model>[-<k>x]-<variant>[-cutout]``
  (``fashion-mnist-mlp-predsim``, ``cifar10-vgg11b-3x-predsim-cutout``, ``cifar10-vgg8b-2x-predsim-bpf``);
- the row's own settings, with Config field names;
- ``paper_test_error``: the paper's published test error (percent) for that run, or null;
- ``paper_params``: the paper's parameter count of the network (as printed, "7.3M"), or null.

Ten more rows are the paper's reference rows for Wide ResNets (global backprop only; the numbers are
quoted from other papers): each has a ``reference`` saying where its number and settings come from and
how the row differs (random erasing, "RE", is not implemented: its row runs without it).

A row is silent where the authors' script used its defaults; ``defaults`` in the same file lists
those (batch 128, Adam, decay factor 0.25, β 0.99, decoder input 4096, one 1024-unit dense block
after the convolutions, projection 128, batch norm on, no dropout, ReLU), and :func:`get_recipe`
fills them, so a recipe is the complete set of training settings of that run. Precedence in the
command line: Config defaults < recipe < the flags a user typed.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources
from typing import Any

from bioplaus.config import Config, ConfigError

# Keys of a row that describe it rather than configure a run.
_META_KEYS = ("name", "paper_test_error", "paper_params", "reference")


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    text = resources.files("bioplaus").joinpath("recipes.json").read_text(encoding="utf-8")
    return json.loads(text)


def recipe_rows() -> list[dict[str, Any]]:
    """Every row as stored (name, settings, paper_test_error), in the file's order."""
    return [dict(row) for row in _load()["recipes"]]


def recipe_defaults() -> dict[str, Any]:
    """The settings the authors' script used where a row is silent."""
    return dict(_load()["defaults"])


def list_recipes() -> list[str]:
    """The recipe names, in the order of the paper's tables."""
    return [row["name"] for row in _load()["recipes"]]


def paper_test_error(name: str) -> float | None:
    """The paper's test error (percent) for recipe ``name``; None where the paper gives none."""
    return _find(name).get("paper_test_error")


def paper_params(name: str) -> str | None:
    """The paper's parameter count of recipe ``name``'s network ("7.3M"), or None where the paper gives none."""
    return _find(name).get("paper_params")


def get_recipe(name: str) -> dict[str, Any]:
    """The Config fields of recipe ``name``: the script's defaults overridden by the row's values.

    Raises ConfigError (one sentence, with the closest names) for an unknown name.
    """
    row = _find(name)
    values = recipe_defaults()
    values.update({k: v for k, v in row.items() if k not in _META_KEYS})
    unknown = sorted(set(values) - set(Config.field_names()))
    if unknown:  # the file is ours; this guards edits to it
        raise ConfigError(f"recipe {name!r} has keys that are not configuration fields: {', '.join(unknown)}")
    return values


def _find(name: str) -> dict[str, Any]:
    for row in _load()["recipes"]:
        if row["name"] == name:
            return row
    close = difflib.get_close_matches(name, list_recipes(), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; see --list-recipes"
    raise ConfigError(f"unknown recipe {name!r}{hint}")
