"""What every command-line entry point shares: one-line errors, quiet warnings, ``--debug``.

``raise SystemExit(cli.run(main))`` runs ``main(argv) -> int`` and turns a *user error*
(`megacompress.errors.UserError` and the OS's missing-file errors: a bad config key or
value, a missing or corrupt file, a mismatched tokenizer or checkpoint) into one
``error: ...`` line on stderr and exit status 2 — printed by global rank 0 only, so a torchrun job shows it once.
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
from pathlib import Path

from megacompress.errors import EXIT_USAGE, UserError, is_user_error

_PROG = {"name": None}  # set by the megacompress command for its subcommands


def set_prog(name: str) -> None:
    """The program name that parsers built after this call show (``megacompress train``)."""
    _PROG["name"] = name


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


def _run_module(invoked: str) -> str | None:
    """The dotted name of the package module ``python -m`` ran (its file is ``sys.argv[0]``), so
    that a kept old entry point (a shim module) shows the name the user typed."""
    package = Path(__file__).resolve().parent
    path = Path(invoked).resolve() if invoked.endswith(".py") else None
    if path is None or package not in path.parents or path.name == "__main__.py":
        return None
    return ".".join(path.relative_to(package.parent).with_suffix("").parts)


def parser(module: str, doc: str, *, script: str | None = None, epilog: str | None = None
           ) -> argparse.ArgumentParser:
    """The project's argument parser: the ``prog`` the user actually typed (``python tools/X.py``
    when run through that wrapper, else ``python -m MODULE``), the docstring as plain text,
    defaults in every flag's help, and ``--debug``."""
    invoked = sys.argv[0].replace(os.sep, "/") if sys.argv else ""
    prog = f"python {script}" if script and invoked.endswith(script) else f"python -m {_run_module(invoked) or module}"
    prog = _PROG["name"] or prog
    result = argparse.ArgumentParser(prog=prog, description=plain(doc.strip()), epilog=epilog and plain(epilog),
                                     formatter_class=HelpFormatter)
    add_debug_flag(result)
    return result


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks for errors (default: one 'error: ...' line)")


class DeviceError(UserError, ValueError):
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


# (message regex, category, where it comes from). A filter's message must match the start of the warning's text.
LIBRARY_WARNINGS = [
    # torch's own torch/utils/mkldnn.py decorates MkldnnLinear with torch.jit.script_method (deprecated in
    # torch 2.13). It is imported through torch._inductor when DeepSpeed's deepspeed.initialize (ZeRO >= 1,
    # is_zero_supported_optimizer) imports deepspeed/runtime/zero/muon/original_muon.py, whose module level
    # calls torch.compile. We call none of these.
    (r"`torch\.jit\.script_method` is deprecated", DeprecationWarning,
     "torch.utils.mkldnn, imported via torch.compile in DeepSpeed's Muon optimizer module"),
    # DeepSpeed's comm backend (deepspeed/comm/torch.py, TorchBackend.get_all_gather_function /
    # get_reduce_scatter_function) calls these collectives, deprecated in torch 2.13: ZeRO-1/2 gather the
    # updated parameter partitions after every step with DP > 1, ZeRO-3 also reduce-scatters gradients.
    (r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated", FutureWarning,
     "deepspeed.comm.torch.TorchBackend, every ZeRO step with DP > 1"),
]


def quiet_library_warnings() -> None:
    """Ignore exactly the `LIBRARY_WARNINGS`: torch's deprecation notices about DeepSpeed's calls,
    not ours, so there is nothing we can change; each filter matches one message, so any other
    warning still shows (inserted in front of the filters `quiet_warnings` sets)."""
    for message, category, _source in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


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
    quiet_library_warnings()


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("MEGACOMPRESS_DEBUG") == "1"
    quiet_warnings()
    try:
        status = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug or not is_user_error(exc):
            raise
        if is_rank_zero():
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    # A main may return its result (a summary dict) instead of a status: that is success.
    return status if isinstance(status, int) else 0
