"""Worker pools start clean: ``train.main`` in-process leaves the signal handlers as it found
them, and a pool worker neither inherits the caller's handlers nor its threads (a forked
worker once inherited the trainer's flag-only SIGTERM handler, ignored ``Pool.terminate()``
and the test run hung)."""

import signal
import threading

from megacompress import train
from megacompress.pools import worker_pool
from megacompress.training.signals import StopSignal


def _nothing() -> None:
    pass


def _state(_):
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, threading.active_count()


def test_train_main_restores_the_signal_handlers(capsys):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    assert train.main(["--print-config"]) == 0
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_pool_workers_get_neither_the_callers_handlers_nor_its_threads():
    stop = StopSignal()  # as in a process that trained in-process before starting a pool
    busy = threading.Event()
    thread = threading.Thread(target=busy.wait)  # a thread of the caller, alive at the start
    thread.start()
    try:
        with worker_pool(2, _nothing) as pool:
            assert pool.map(_state, range(4)) == [(True, 1)] * 4
            pool.terminate()
            pool.join()
    finally:
        busy.set()
        thread.join()
        stop.restore()
