"""One live training run per run directory: an exclusive ``fcntl`` lock on ``RUN_DIR/run.lock``.

Two runs writing one run directory interleave their ``metrics.jsonl``, overwrite each other's
checkpoints and ``exit_status.json`` and delete each other's writes in flight. So global rank 0
holds ``flock(LOCK_EX)`` on ``RUN_DIR/run.lock`` for the trainer's whole life (and on
``CHECKPOINT_DIR/run.lock`` when the checkpoints live outside the run directory). The file
records the holder as JSON — ``host``, ``pid``, ``started`` (UTC), ``slurm_job_id``,
``released`` — so a second run can name it.

The kernel drops an ``flock`` when its process dies (also on ``kill -9``; on NFS through the
lock manager), so a lock left by a dead process is simply taken: the new holder warns, naming
the dead one (or says it continues the same SLURM job, as after a submitit requeue). A live
holder makes `RunLock.acquire` raise `RunDirBusy`.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from megacompress.errors import UserError

LOCK_NAME = "run.lock"


class RunDirBusy(UserError, RuntimeError):
    """Another live process holds the directory's lock; the message names it."""


def _describe(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')}{job}"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """``acquire()`` at start-up, ``release()`` at the end (process exit releases it too)."""

    def __init__(self, directory: str | os.PathLike, what: str = "logging.run_dir"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def _read(self) -> dict:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> str | None:
        """Take the lock or raise `RunDirBusy`. Returns a note about a previous holder that
        did not release it (a crash or a requeue), else None."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirBusy(f"{self.what} {self.directory} is in use by another training run ({_describe(self._read())}; "
                             f"lock {self.path}): wait for it to end, or use another {self.what}") from None
        previous = self._read()
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "released": False}
        self._fd = fd
        self._write(me)
        return self._note(previous, me)

    def _note(self, previous: dict, me: dict) -> str | None:
        if not previous or previous.get("released", True):
            return None
        if previous.get("slurm_job_id") and previous.get("slurm_job_id") == me["slurm_job_id"]:
            return f"continuing SLURM job {me['slurm_job_id']} in {self.directory} (requeued)"
        if previous.get("host") == me["host"] and _alive(previous.get("pid")):
            # flock was free, so that pid no longer holds it (a reused pid, or a fork left running)
            return f"took over the lock {self.path} of {_describe(previous)}, which no longer holds it"
        return f"took over the lock {self.path} left by {_describe(previous)}, which ended without releasing it"

    def _write(self, record: dict) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is None:
            return
        record = self._read()
        record["released"] = True
        self._write(record)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    __del__ = release  # a Trainer dropped without train() (tests, notebooks) frees its directory
