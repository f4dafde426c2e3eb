"""What a training run's log lines look like: `stamp` prefixes each line of a message with the
local time, ``2026-12-07 12:01:02 step 40/120 | ...`` (`MetricsLogger.say` prints these and
appends them to ``RUN_DIR/train.log``). The library notices every command filters are in
`megacompress.cli.quiet_library_warnings`.
"""

from __future__ import annotations

import time

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

def stamp(text: str, now: float | None = None) -> str:
    """``text`` with every line prefixed by the local time (``TIME_FORMAT``) and a space."""
    prefix = time.strftime(TIME_FORMAT, time.localtime(now))
    return "\n".join(f"{prefix} {line}" for line in text.split("\n"))
