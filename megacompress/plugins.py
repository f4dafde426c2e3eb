"""Finding the methods: the package's own (``megacompress.methods``) and anyone else's.

A *method* is a package that registers what it adds — an architecture, mask kinds, a dataset
kind, tokenizer specials, a fast generator, ``megacompress`` subcommands — when it is imported.
`load_methods` imports, once per process:

1. ``megacompress.methods`` (which imports the built-in method packages);
2. every module named in ``MEGACOMPRESS_PLUGINS`` (comma-separated import paths; the
   variable reaches every rank that torchrun or SLURM starts, so a plugin trains distributed);
3. every ``megacompress.methods`` entry point of the installed distributions
   (``[project.entry-points."megacompress.methods"] mymethod = "mypkg.method"``).

The registries look names up through `lookup`, which calls it on a miss, so ``ModelConfig(architecture=...)`` or a dataset kind
in a YAML file finds a method without the caller importing it. Shared layers import methods
only through this module, by name at run time; the layering test (``tests/test_layers.py``)
checks that no static import goes upward.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from megacompress.errors import UserError

ENV_VAR = "MEGACOMPRESS_PLUGINS"
ENTRY_POINT_GROUP = "megacompress.methods"

_state = {"loaded": False}


class PluginError(UserError, ImportError):
    """A plugin module named in the environment or an entry point that is not importable."""


def plugin_modules() -> list[str]:
    names = [n.strip() for n in os.environ.get(ENV_VAR, "").split(",") if n.strip()]
    names += [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return names


def lookup(table: dict, name):
    """``table[name]`` of a registry, importing the methods first when ``name`` is not there
    yet; None when no method registers it."""
    if name not in table:
        load_methods()
    return table.get(name)


def load_methods() -> None:
    """Import the built-in methods and the plugins (idempotent; re-entrant while they import)."""
    if _state["loaded"]:
        return
    _state["loaded"] = True  # before importing: a method's own registry lookups must not recurse
    try:
        importlib.import_module("megacompress.methods")
        for name in plugin_modules():
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name and name.startswith(exc.name):
                    raise PluginError(f"{ENV_VAR} / entry point names {name!r}, which cannot be imported "
                                      f"({exc})") from exc
                raise
    except BaseException:
        _state["loaded"] = False
        raise

