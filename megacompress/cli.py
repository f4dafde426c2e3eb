"""What every command-line entry point shares: one-line errors, quiet warnings, ``--debug``.

``raise SystemExit(cli.run(main))`` runs ``main(argv) -> int`` and turns a *user error*
(a bad config key or value, a missing or corrupt file, a mismatched tokenizer or
checkpoint: the exception classes in `user_errors`) into one ``error: ...`` line on
stderr and exit status 2 — printed by global rank 0 only, so a torchrun job shows it once.
Anything else is a bug and keeps its traceback. ``--debug`` (or ``MEGACOMPRESS_DEBUG=1``)
shows the traceback of user errors too.

Warnings are printed as ``warning: ...`` lines, once each, by rank 0 only; other ranks are
silent (eight ranks repeating DeepSpeed's and torch's notices bury the real output).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn

EXIT_USAGE = 2


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; a flag's help shows its default when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, [], "", argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def plain(text: str) -> str:
    """Docstring text for a terminal: reStructuredText ``literals``, `references` and ``::`` unmarked."""
    text = re.sub(r"``([^`]+)``|`([^`]+)`", lambda m: m.group(1) or m.group(2), text)
    return re.sub(r"::$", ":", text, flags=re.M)


def parser(module: str, doc: str, *, script: str | None = None, epilog: str | None = None
           ) -> argparse.ArgumentParser:
    """The project's argument parser: the ``prog`` the user actually typed (``python tools/X.py``
    when run through that wrapper, else ``python -m MODULE``), the docstring as plain text,
    defaults in every flag's help, and ``--debug``."""
    invoked = sys.argv[0].replace(os.sep, "/") if sys.argv else ""
    prog = f"python {script}" if script and invoked.endswith(script) else f"python -m {module}"
    result = argparse.ArgumentParser(prog=prog, description=plain(doc.strip()), epilog=epilog and plain(epilog),
                                     formatter_class=HelpFormatter)
    add_debug_flag(result)
    return result


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks for errors (default: one 'error: ...' line)")


class DeviceError(ValueError):
    """A ``--device`` that is not a device, or a GPU this machine does not have."""


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda or cuda:N; cuda = this rank's GPU (LOCAL_RANK); "
                             "auto (default) = cuda when CUDA is available, else cpu")


def resolve_device(name: str):
    """``--device`` -> ``torch.device`` (see `add_device_flag`); `DeviceError` when unusable."""
    import torch

    given = name
    if given == "auto":
        given = "cuda" if torch.cuda.is_available() else "cpu"
    if given == "cuda":  # one GPU per rank under torchrun, as every launcher places them
        given = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    try:
        device = torch.device(given)
    except RuntimeError:
        raise DeviceError(f"--device {name!r} is not a device (cpu, cuda, cuda:N or auto)") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {name!r}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA device is available on this machine")
    return device


def is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the input is wrong, not the code (imported lazily: cheap --help)."""
    from megacompress.data.indexed import ShardError
    from megacompress.data.registry import DataConfigError
    from megacompress.data.sentences import SentenceModelError
    from megacompress.data.instruction_dataset import InstructionDataError
    from megacompress.data.tokenizers import TokenizerFileError, TokenizerMismatch
    from megacompress.generation.generate import GenerationRequestError
    from megacompress.generation.gist_cache import GistCacheError
    from megacompress.integrity import IntegrityError
    from megacompress.models.hf_llama import ConversionError
    from megacompress.models.kv_cache import KVCacheOverflow
    from megacompress.models.config import ConfigError
    from megacompress.parallel.state import LayoutError
    from megacompress.training.checkpoint import CheckpointError
    from megacompress.training.config import TrainConfigError
    from megacompress.training.safe_load import UnsafeCheckpointError

    return (ConfigError, TrainConfigError, DataConfigError, ShardError, SentenceModelError, CheckpointError,
            TokenizerMismatch, TokenizerFileError, GenerationRequestError, KVCacheOverflow, DeviceError, LayoutError,
            IntegrityError, UnsafeCheckpointError, GistCacheError, InstructionDataError, ConversionError,
            FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def quiet_warnings() -> None:
    """Rank 0: each warning once, as one line; other ranks: none."""
    warnings.formatwarning = _one_line_warning
    if is_rank_zero():
        warnings.simplefilter("once")
    else:
        warnings.simplefilter("ignore")
        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)


def die(exc: BaseException, debug: bool = False) -> NoReturn:
    """End a CLI on a user error: one ``error: ...`` line (rank 0) and exit status 2."""
    if debug:
        raise exc
    if is_rank_zero():
        print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE) from None


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("MEGACOMPRESS_DEBUG") == "1"
    quiet_warnings()
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug or not isinstance(exc, user_errors()):
            raise
        if is_rank_zero():
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
