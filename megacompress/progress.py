"""Progress that reads well both on a terminal and in a log file.

On a terminal `progress` is a tqdm bar. When stderr is not a terminal (CI, SLURM logs,
``make demo | tee``) a bar's carriage-return redraws pile up into one huge line, so
there it is a `LineProgress` instead: one plain line at most every ``interval_s``
seconds and one at the end, e.g. ``preprocess: 12.6M/40.1M B (31%), 3.2M B/s, 4 s``.

Other libraries' tqdm bars are off when their stream is not a terminal (`quiet_library_bars`,
applied when this module is imported), e.g. DeepSpeed's ``zero_to_fp32`` "Loading checkpoint
shards" bar in ``tools/convert_checkpoint.py export``.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

from tqdm import tqdm


def is_interactive(stream=None) -> bool:
    """Whether ``stream`` (default stderr, where progress goes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class LineProgress:
    """The tqdm calls the code uses (``update``, ``set_postfix``, ``close``, context manager,
    iteration), printed as plain lines."""

    def __init__(self, iterable=None, *, total: float | None = None, desc: str = "", unit: str = "it",
                 initial: float = 0, unit_scale: bool = False, interval_s: float = 30.0, file=None):
        self.iterable = iterable
        self.total = total if total is not None or iterable is None else _length(iterable)
        self.desc, self.unit, self.unit_scale = desc, unit, unit_scale
        self.n, self.start_n = initial, initial
        self.interval_s = interval_s
        self.file = sys.stderr if file is None else file
        self.postfix = ""
        self.started = self.last = time.perf_counter()
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval_s:
            self.last = now
            self._print(now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.start_n:
                self._print(time.perf_counter())

    def _fmt(self, value: float) -> str:
        if not self.unit_scale:
            return f"{value:g}" if isinstance(value, float) else str(value)
        for prefix in ("", "k", "M", "G", "T"):
            if abs(value) < 1000:
                return f"{value:.1f}{prefix}"
            value /= 1000
        return f"{value:.1f}P"

    def _print(self, now: float) -> None:
        elapsed = now - self.started
        done = f"{self._fmt(self.n)}/{self._fmt(self.total)} {self.unit}" if self.total else \
            f"{self._fmt(self.n)} {self.unit}"
        parts = [done + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if elapsed > 0:
            parts.append(f"{self._fmt((self.n - self.start_n) / elapsed)} {self.unit}/s")
        parts.append(f"{elapsed:.0f} s")
        if self.postfix:
            parts.append(self.postfix)
        print(f"{self.desc}: {', '.join(parts)}", file=self.file, flush=True)


def _length(iterable) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None


def progress(iterable=None, *, enabled: bool = True, **kwargs: Any):
    """A tqdm bar on a terminal, a `LineProgress` otherwise, a silent bar when not ``enabled``.

    Accepts tqdm's ``total``, ``desc``, ``unit``, ``initial``, ``unit_scale``; other
    tqdm-only keywords (``dynamic_ncols``...) apply to the bar only.
    """
    interval_s = kwargs.pop("interval_s", 30.0)
    if not enabled or is_interactive():
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, disable=not enabled, **kwargs)
    line_keys = ("total", "desc", "unit", "initial", "unit_scale")
    return LineProgress(iterable, interval_s=interval_s, **{k: v for k, v in kwargs.items() if k in line_keys})


_DISABLE_POSITION = 10  # tqdm(iterable, desc, total, leave, file, ncols, mininterval, maxinterval, miniters, ascii, disable)


def quiet_library_bars() -> None:
    """Make tqdm's default ``disable=False`` into ``disable=None``: a bar whose caller does not
    choose is then off when its stream is not a terminal (tqdm's own rule for ``None``).

    Bars of other libraries (DeepSpeed's ``zero_to_fp32``, Hugging Face downloads) pass no
    ``disable``, and their carriage-return redraws would otherwise end up in a SLURM log or a
    redirected stderr. Our bars pass ``disable`` (`progress`), so this changes none of
    them. Idempotent; applied when this module is imported.
    """
    init = tqdm.__init__
    if getattr(init, "_off_a_terminal", False):
        return

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if len(args) <= _DISABLE_POSITION:  # not given positionally
            kwargs.setdefault("disable", None)
        init(self, *args, **kwargs)

    __init__._off_a_terminal = True
    tqdm.__init__ = __init__


quiet_library_bars()
