"""Every flag of every ``megacompress`` subcommand (and of their own subcommands) has help text,
and ``megacompress --help`` lists each subcommand in one sentence."""

import argparse
import subprocess
import sys

import pytest
from distributed_helpers import REPO_ROOT, cpu_env

from megacompress import command


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser_of(main, argv) -> argparse.ArgumentParser:
    """The parser ``main(argv)`` builds: caught at its parse_args, before anything runs."""
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _Parsed(self)

    argparse.ArgumentParser.parse_args = capture
    try:
        main(argv)
    except _Parsed as parsed:
        return parsed.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{main} did not parse its arguments")


def _parsers(name: str, parser: argparse.ArgumentParser):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _parsers(f"{name} {sub}", subparser)


def _all_parsers():
    for name, sub in command.commands().items():
        entry = sub.load()
        table = getattr(sys.modules[entry.__module__], "SUBCOMMANDS", None)
        if table:  # a group of subcommands dispatched by name (e.g. equal-info)
            for inner in table.values():
                yield from _parsers(f"{name} {inner.name}", _parser_of(inner.load(), []))
        else:
            yield from _parsers(name, _parser_of(entry, []))


def test_every_flag_has_help():
    missing = []
    for name, parser in _all_parsers():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"megacompress {name}: {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_top_level_help_lists_every_subcommand():
    proc = subprocess.run([sys.executable, "-m", "megacompress", "--help"], cwd=REPO_ROOT, env=cpu_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("preprocess", "train", "convert", "generate", "gist", "equal-info", "launch"):
        assert f"\n    {name} " in proc.stdout or f"  {name} " in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", ["train", "gist", "equal-info", "convert"])
def test_subcommand_help_shows_its_name(name):
    proc = subprocess.run([sys.executable, "-m", "megacompress", name, "--help"], cwd=REPO_ROOT, env=cpu_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: megacompress {name}"), proc.stdout[:300]
