"""The one way the package starts worker processes (preprocessing, compression)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.pool import Pool


def worker_pool(processes: int, initializer: Callable[..., None], initargs: tuple = ()) -> Pool:
    """A pool whose workers start clean, forked from a fork server, never from the caller.

    A plain ``fork`` copies the caller as it is: its other threads' held locks (gloo, tqdm's
    monitor, logging; a worker that touches one never returns and the caller waits forever)
    and its Python signal handlers (the trainer's only sets a flag, so a worker that inherited
    it ignored ``Pool.terminate()``). The fork server is a fresh single-threaded interpreter;
    ``initializer`` builds each worker's state from ``initargs``, which must pickle.
    """
    ctx = multiprocessing.get_context("forkserver")
    # The server imports the initializer's module once; each worker then forks with it loaded.
    ctx.set_forkserver_preload([initializer.__module__])
    return ctx.Pool(processes, initializer, initargs)
