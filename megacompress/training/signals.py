"""Turn SIGTERM / SIGUSR2 (SLURM preemption, ``scancel --signal``, submitit) into a
checkpoint at the next step boundary, then a distinct exit code.

The handler only sets a flag (nothing unsafe runs inside a signal handler). At each
step boundary the training loop calls `StopSignal.agreed()`, an all-reduce (MAX) of the
flag over all ranks, so every rank stops after the same step even if the signal reached
only some of them; they then save a checkpoint together and ``python -m megacompress.train``
exits with `EXIT_REQUEUE`.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

# Exit status of `python -m megacompress.train` after a signal-triggered checkpoint:
# EX_TEMPFAIL from sysexits.h ("try again later"); launchers requeue on it.
EXIT_REQUEUE = 75
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StopSignal:
    """Installs the handlers on construction; `restore()` puts the previous ones back."""

    def __init__(self, signals: tuple[signal.Signals, ...] = HANDLED_SIGNALS):
        self.received: signal.Signals | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum: int, frame) -> None:  # noqa: ARG002 (signal handler signature)
        self.received = signal.Signals(signum)

    def agreed(self) -> bool:
        """True on every rank if any rank received a signal (collective when distributed)."""
        flag = torch.tensor([1 if self.received is not None else 0], dtype=torch.int32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":  # nccl reduces device tensors only
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
