r"""torchrun's failure report, kept out of the way when the trainer has already said why it stopped.

When a worker exits non-zero, torchrun (``torch.distributed.elastic``) logs
``Sending process N closing signal SIGTERM`` / ``failed (exitcode: N) local_rank: ...``
and ends with a traceback of its own and a block::

    torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
    ============================================================
    megacompress.train FAILED
    ...
    Root Cause (first observed failure):
    [0]:
      ...
      rank      : 0 (local_rank: 0)
      exitcode  : 2 (pid: 1234)
    ...
    ============================================================

For a user error (the trainer printed one ``error: ...`` line and exited 2) or a stop after
SIGTERM / SIGUSR2 (it saved a checkpoint and exited 75) that report only buries the one line
that matters. `ReportFilter` sits on torchrun's stderr (which the ranks share): everything
passes through at once, except that from torchrun's first failure log line on the output
is held until torchrun exits. Then `ReportFilter.quiet_exit` says whether the report shows
only such deliberate exits (the first failure exited 2 or 75; the others too, or were
ended by torchrun's SIGTERM / SIGKILL): `drop_report` prints what was held without the
report, `release` prints it all. Real crashes (any other exit code, a rank killed by a
signal) keep torchrun's full report.
"""

from __future__ import annotations

import io
import re
import signal
import sys
import threading
from dataclasses import dataclass

from megacompress.errors import EXIT_USAGE

EXIT_REQUEUE = 75  # megacompress.training.signals.EXIT_REQUEUE (not imported: that module imports torch)
QUIET_EXIT_CODES = (EXIT_USAGE, EXIT_REQUEUE)
# How torchrun ends the other ranks once one has failed: they are consequences, not causes.
AGENT_EXIT_CODES = (-signal.SIGTERM, -signal.SIGKILL)

# A torch.distributed log line (glog format): "E1207 11:55:16.163000 9144 .../torch/distributed/...py:1002] ..."
_TORCH_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ .*torch[/\\]distributed[/\\].*?:\d+\] ")
_REPORT_START = re.compile(r"\] (?:failed \(exitcode: -?\d+\) local_rank:|Sending process \d+ closing signal )")
# The beginning of a line that may still become a torch log line (held until its end arrives).
_LOG_PREFIX = re.compile(rb"^[IWEF]\d{0,4}(?: |$)")
_ERROR = b"error: "  # how megacompress.cli prints a user error
_CHILD_FAILED = re.compile(r"ChildFailedError:\s*$")
_BORDER = re.compile(r"^=+$")
_RANK = re.compile(r"^\s+rank\s+:\s*(-?\d+)")
_EXITCODE = re.compile(r"^\s+exitcode\s+:\s*(-?\d+)")


@dataclass(frozen=True)
class Failure:
    rank: int
    exitcode: int


@dataclass(frozen=True)
class Report:
    """torchrun's ChildFailedError block: the first observed failure and the others."""

    root: Failure
    others: tuple[Failure, ...]
    span: tuple[int, int]  # its lines (with torchrun's traceback before it) in the held lines: [start, end)


def parse_report(lines: list[str]) -> Report | None:
    """The report in ``lines`` (text lines without their ends), or None when there is none."""
    marker = next((i for i, line in enumerate(lines) if _CHILD_FAILED.search(line)), None)
    if marker is None:
        return None
    borders = [i for i in range(marker + 1, len(lines)) if _BORDER.match(lines[i])]
    if len(borders) < 2:
        return None
    end = borders[1] + 1
    start = next((i for i in range(marker, -1, -1) if lines[i].startswith("Traceback (most recent call last)")),
                 marker)
    failures, root_index, rank = [], None, None
    for line in lines[borders[0]:end]:
        if line.startswith("Root Cause"):
            root_index = len(failures)
        elif match := _RANK.match(line):
            rank = int(match.group(1))
        elif (match := _EXITCODE.match(line)) and rank is not None:
            failures.append(Failure(rank, int(match.group(1))))
            rank = None
    if root_index is None or root_index >= len(failures):
        return None
    root = failures[root_index]
    return Report(root, tuple(f for i, f in enumerate(failures) if i != root_index), (start, end))


class ReportFilter:
    """Passes torchrun's stderr through, holding it from torchrun's first failure log line on.

    ``feed`` bytes as they arrive (from a reader thread); once torchrun has exited, call
    `quiet_exit` and then `drop_report` or `release`. Whatever arrives after that passes
    straight through.
    """

    def __init__(self, out=None):
        self._out = out
        self._lock = threading.Lock()
        self._pending = b""        # the start of a line that may become a torch log line
        self._line_started = False  # part of the current line was written already
        self._held: list[bytes] | None = None  # complete lines (and a last partial one) held back
        self.error_lines = 0       # "error: ..." lines seen (a user error's message, or argparse's)

    # -- input -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        with self._lock:
            data = self._pending + data
            self._pending = b""
            *lines, tail = data.split(b"\n")
            for line in lines:
                self._line(line + b"\n")
            if not tail:
                return
            if self._held is not None:
                self._held.append(tail)  # joined with the rest of its line in `_text_lines`
                self._line_started = True
            elif not self._line_started and (_LOG_PREFIX.match(tail) or _ERROR.startswith(tail)) and b"\r" not in tail:
                self._pending = tail  # may be a torch log line (or an error line): wait for more of it
            else:
                if not self._line_started and tail.startswith(_ERROR):
                    self.error_lines += 1  # print() writes the message and its newline separately
                self._write(tail)  # e.g. a progress bar's redraw: show it now
                self._line_started = True

    def close(self) -> None:
        """End of input: a last line without its newline is a line too."""
        with self._lock:
            if self._pending:
                pending, self._pending = self._pending, b""
                self._line(pending)

    def _line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if (not self._line_started and line.startswith(_ERROR)) or ": error: " in text:  # argparse: "PROG: error: ..."
            self.error_lines += 1
        if self._held is None and not self._line_started and _TORCH_LOG.match(text) and _REPORT_START.search(text):
            self._held = []
        if self._held is not None:
            self._held.append(line)
        else:
            self._write(line)
        self._line_started = False

    # -- decision ----------------------------------------------------------------------------

    def _text_lines(self) -> list[str]:
        return b"".join(self._held or []).decode("utf-8", "replace").replace("\r\n", "\n").split("\n")

    def report(self) -> Report | None:
        with self._lock:
            return parse_report(self._text_lines()) if self._held else None

    def quiet_exit(self) -> Failure | None:
        """The first failure, when the report shows only deliberate exits (see the module's doc)."""
        report = self.report()
        if report is None or report.root.exitcode not in QUIET_EXIT_CODES:
            return None
        if all(f.exitcode in QUIET_EXIT_CODES + AGENT_EXIT_CODES for f in report.others):
            return report.root
        return None

    def drop_report(self) -> None:
        """Print what was held except torchrun's report and its log lines; pass the rest through."""
        with self._lock:
            lines = self._text_lines()
            report = parse_report(lines)
            start, end = report.span if report else (0, 0)
            kept = [line for i, line in enumerate(lines)
                    if not start <= i < end and not _TORCH_LOG.match(line)]
            while kept and not kept[-1]:
                kept.pop()
            self._held = None
            if kept:
                self._write(("\n".join(kept) + "\n").encode())

    def release(self) -> None:
        """Print everything held, as it came."""
        with self._lock:
            held, self._held = self._held, None
            if held:
                self._write(b"".join(held))

    # -- output ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        out = self._out if self._out is not None else sys.stderr
        if isinstance(out, (io.RawIOBase, io.BufferedIOBase)):
            out.write(data)
        elif isinstance(getattr(out, "buffer", None), (io.RawIOBase, io.BufferedIOBase)):
            out.flush()  # what was printed to the text layer first
            out.buffer.write(data)
            out.buffer.flush()
        else:  # a text stream only (e.g. pytest's capture)
            out.write(data.decode("utf-8", "replace"))
        out.flush()
