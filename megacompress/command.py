"""The ``megacompress`` console command: one entry point, one subcommand per capability.

``megacompress SUBCOMMAND [flags]`` runs the subcommand's ``main(argv) -> int`` through
`megacompress.cli.run` (one ``error: ...`` line and exit 2 for a user error, ``--debug`` for the
traceback). The shared layers register the generic subcommands below; a method package
registers its own (``register_command(NAME, ...)`` in its package's ``__init__.py``), so
``megacompress --help`` lists every loaded method's commands. Targets are ``"module:function"``
strings, imported only when that subcommand runs: ``megacompress --help`` stays fast.

The older entry points (``python -m megacompress.train``, ``tools/*.py``, ``launchers/*.py``)
run the same functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from megacompress import cli, plugins


@dataclass(frozen=True)
class Subcommand:
    name: str
    summary: str  # one sentence for ``megacompress --help``
    target: str   # "package.module:function", the function taking argv -> exit status

    def load(self):
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function or "main")


_COMMANDS: dict[str, Subcommand] = {}


def register_command(name: str, summary: str, target: str) -> None:
    """Add ``megacompress NAME``; a name is registered once (a second target is an error)."""
    known = _COMMANDS.get(name)
    if known is not None and known.target != target:
        raise ValueError(f"megacompress subcommand {name!r} is already registered ({known.target})")
    _COMMANDS[name] = Subcommand(name, summary, target)


def commands() -> dict[str, Subcommand]:
    plugins.load_methods()
    return dict(sorted(_COMMANDS.items()))


register_command("preprocess", "Tokenize a corpus into memory-mapped token shards (.bin/.idx, sentence sidecars).",
                 "megacompress.data.preprocess:main")
register_command("train", "Train any registered architecture with DeepSpeed ZeRO from a YAML config "
                          "(run it under torchrun for several processes).", "megacompress.train:main")
register_command("convert", "Checkpoint conversions: export, to-universal, verify, import-hf, import-gguf, export-hf.",
                 "megacompress.training.convert:main")
register_command("generate", "Generate text from a saved model (fast cached or slow reference mode).",
                 "megacompress.generate:main")
register_command("plot", "Plot training runs' loss, validation loss, learning rate and throughput.",
                 "megacompress.training.plot:main")
register_command("launch", "Start training under torchrun, the deepspeed launcher or SLURM (submitit).",
                 "megacompress.launch:main")


def run_subcommand(prog: str, table: dict[str, Subcommand], argv: list[str] | None,
                   description: str = "") -> int:
    """``PROG NAME [flags]``: run ``table[NAME]``'s target (a group of subcommands, e.g. a method's)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = argv[:1] == ["--debug"]  # `PROG --debug NAME ...`: the subcommand's own --debug
    argv = argv[debug:]
    parser = argparse.ArgumentParser(prog=prog, description=_described(description, table), formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"Run '{prog} SUBCOMMAND --help' for its flags.")
    parser.add_argument("subcommand", metavar="SUBCOMMAND", choices=list(table), help="one of the subcommands above")
    if not argv or argv[0] in ("-h", "--help"):
        parser.parse_args(argv[:1] or ["--help"])
    if argv[0] not in table:
        parser.error(f"unknown subcommand {argv[0]!r}; choose from {', '.join(table)}")
    cli.set_prog(f"{prog} {argv[0]}")
    return table[argv[0]].load()(["--debug"] * debug + argv[1:])


def _described(description: str, table: dict[str, Subcommand]) -> str:
    """The description, then one line per subcommand (its one-sentence summary)."""
    rows = "\n".join(f"  {c.name:<11} {c.summary}" for c in table.values())
    return f"{cli.plain(description)}\n\nsubcommands:\n{rows}"


def _parser(table: dict[str, Subcommand]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megacompress", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_described("Pretraining language models over compressed text.", table),
        epilog="Run 'megacompress SUBCOMMAND --help' for a subcommand's flags. docs/ has the guides.")
    parser.add_argument("--version", action="version", version=f"megacompress {_version()}")
    parser.add_argument("subcommand", metavar="SUBCOMMAND", choices=list(table), help="one of the subcommands above")
    return parser


def _version() -> str:
    from megacompress import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return cli.run(_dispatch, argv)  # a plugin that cannot be imported is a user error too


def _dispatch(argv: list[str]) -> int:
    table = commands()
    parser = _parser(table)
    if not argv or argv[0] in ("-h", "--help") or argv[0].startswith("--version"):
        parser.parse_args(argv[:1] or ["--help"])
    name, rest = argv[0], argv[1:]
    if name not in table:
        parser.error(f"unknown subcommand {name!r}; choose from {', '.join(table)}")
    cli.set_prog(f"megacompress {name}")
    return table[name].load()(rest)


if __name__ == "__main__":
    raise SystemExit(main())
