"""What every multiprocessing pool worker of the package (preprocessing, compression) does first."""

from __future__ import annotations

import signal


def default_signals() -> None:
    """Let SIGTERM / SIGUSR2 end this worker again.

    A forked worker inherits the parent's Python signal handlers. The trainer's only sets a
    flag (`megacompress.training.signals`), so a worker that inherited it while idle ignores
    ``Pool.terminate()``'s SIGTERM, and the parent waits for it forever.
    """
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
