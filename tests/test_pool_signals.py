"""Signal handlers do not leak: ``train.main`` in-process leaves them as it found them, and a
forked pool worker ends on ``Pool.terminate()`` even under the trainer's flag-only handler
(inherited, that handler once kept an idle compression worker alive and the test run hung)."""

import multiprocessing
import signal

from megacompress import train
from megacompress.pools import default_signals
from megacompress.training.signals import StopSignal


def _sigterm_is_default(_):
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_train_main_restores_the_signal_handlers(capsys):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    assert train.main(["--print-config"]) == 0
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_forked_pool_workers_get_the_default_sigterm_back():
    stop = StopSignal()  # as in a process that trained in-process before forking a pool
    try:
        with multiprocessing.get_context("fork").Pool(2, default_signals) as pool:
            assert pool.map(_sigterm_is_default, range(4)) == [True] * 4
    finally:
        stop.restore()
