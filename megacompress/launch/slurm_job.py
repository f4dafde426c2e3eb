"""The callable a SLURM job runs: one task per GPU (or per CPU rank), trainer in-process.

submitit pickles a ``TrainJob`` into the job folder and every task of the job unpickles it
and calls it. ``__call__`` exports the torch.distributed environment submitit derives
from SLURM (MASTER_PORT from the job id, RANK, WORLD_SIZE, LOCAL_RANK), with MASTER_ADDR
the first node's address as SLURM knows it (``NodeAddr``, looked up once by the sbatch
script: node names need not resolve), and calls ``megacompress.train.main`` in this
process; the trainer resumes from the run's ``latest`` checkpoint whenever there is one.

Preemption and time limits: submitit asks SLURM to send SIGUSR2 shortly before the time
limit (and ``scancel --signal=USR2 JOBID`` sends it by hand). The trainer catches it,
saves a checkpoint at the next step boundary on every rank and returns ``EXIT_REQUEUE``
(75); rank 0 then runs submitit's own handler, which calls ``checkpoint()``
(a DelayedSubmission of this same job: nothing else to carry, the checkpoint is on disk)
and ``scontrol requeue``. On SIGTERM (``scancel``, ``scontrol requeue``, preemption with
PreemptMode=REQUEUE) SLURM itself decides what happens next, so every rank just exits
without a result and a requeued job resumes from the checkpoint.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

from megacompress.launch.common import TRAIN_MODULE, TrainCommand, run_entry_point
from megacompress.training.signals import EXIT_REQUEUE

# Set by the sbatch script (megacompress.launch.slurm FIRST_NODE_ADDR_SETUP) to the first node's NodeAddr.
FIRST_NODE_ADDR_ENV = "MEGACOMPRESS_FIRST_NODE_ADDR"


def _exit_without_teardown(result: Path | None = None) -> None:
    """Leave a task that finished cleanly without the interpreter's teardown (status 0).

    Registered with ``atexit`` once training returned, so it runs after submitit wrote the
    task's ``result`` (not when that failed: the task then fails as submitit makes it) or, on a
    requeue (``result`` None), deliberately wrote none: everything of ours is on disk. The teardown can still
    abort the process: gloo threads kept alive by references DeepSpeed holds are destroyed with
    the interpreter ("terminate called without an active exception", SIGABRT), and SLURM then
    marks a finished task FAILED. Seen once in six full test runs on a rank of a requeued job.
    """
    if result is not None and not result.exists():
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@dataclass
class TrainJob(submitit.helpers.Checkpointable):
    """Picklable job: the training command plus what every task needs around it.

    ``run_dir`` is the trainer's ``logging.run_dir`` (it writes ``exit_status.json`` there,
    which says which signal stopped it); ``checkpoint_dir`` its checkpoints, named in the
    message of a failed task. ``gpus`` pins each task to its local GPU. The
    environment a CPU rank needs (DS_ACCELERATOR, OMP_NUM_THREADS) is exported by the
    sbatch script (megacompress.launch.slurm), before python starts.
    """

    command: TrainCommand
    run_dir: str
    checkpoint_dir: str = ""
    gpus: bool = True
    module: str = TRAIN_MODULE

    def __call__(self) -> dict:
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=self.gpus, overwrite=True)
        # submitit's MASTER_ADDR is the first node's *name*, which need not resolve.
        dist_env.master_addr = os.environ.get(FIRST_NODE_ADDR_ENV) or dist_env.master_addr
        os.environ["MASTER_ADDR"] = dist_env.master_addr
        # submitit installed its checkpoint-and-requeue handler before calling us; the
        # trainer replaces it with its own while it runs, so keep it for afterwards.
        requeue_handler = signal.getsignal(signal.SIGUSR2)
        try:
            status = run_entry_point(self.module, self.command.argv())
        except Exception as err:  # a dead node or rank reaches the others as a collective's error
            raise RuntimeError(self._failure(dist_env.rank, f"failed: {err}")) from err
        if status == 0:
            atexit.register(_exit_without_teardown, submitit.JobEnvironment().paths.result_pickle)
            return {"rank": dist_env.rank, "world_size": dist_env.world_size, "run_dir": self.run_dir,
                    "node": os.environ.get("SLURMD_NODENAME"),
                    "master": f"{dist_env.master_addr}:{dist_env.master_port}"}
        if status != EXIT_REQUEUE:
            raise RuntimeError(self._failure(dist_env.rank, f"exited with status {status}"))
        # Checkpointed after a signal. Only rank 0 requeues; every rank leaves without a
        # result file, so submitit waits for the requeued job's results.
        if dist_env.rank == 0 and self._stopped_by() != "SIGTERM" and callable(requeue_handler):
            requeue_handler(signal.SIGUSR2, None)  # checkpoint() + scontrol requeue + exit
        atexit.register(_exit_without_teardown)
        sys.exit(0)

    def _failure(self, rank: int, what: str) -> str:
        """The message of a failed task: where, and what resubmitting will resume from."""
        latest = Path(self.checkpoint_dir) / "latest"
        resume = (f"submitting the same command again resumes from {self.checkpoint_dir}/{latest.read_text().strip()}"
                  if self.checkpoint_dir and latest.is_file() else "no checkpoint was committed: a new job starts over")
        return (f"{self.module} on rank {rank} (node {os.environ.get('SLURMD_NODENAME')}, job "
                f"{os.environ.get('SLURM_JOB_ID')}) {what}; {resume}; see every task's log")

    def _stopped_by(self) -> str | None:
        """The signal name rank 0's trainer recorded in RUN_DIR/exit_status.json, if any."""
        path = Path(self.run_dir) / "exit_status.json"
        try:
            return json.loads(path.read_text()).get("signal")
        except (OSError, ValueError):
            return None


@dataclass
class EntryPointJob:
    """Picklable job that calls ``module.main(argv)`` once in one task (e.g. one preprocessing
    partition, or their merge); a non-zero exit fails the job with the command in the message."""

    module: str
    argv: list[str]

    def __call__(self) -> int:
        status = run_entry_point(self.module, self.argv)
        if status:
            raise RuntimeError(f"python -m {self.module} {' '.join(self.argv)} exited with status {status}")
        return status


def main(argv: list[str] | None = None) -> int:
    """Not a command (what a submitted job unpickles and runs): ``--help`` says so, anything
    else is refused with status 1."""
    from megacompress import cli

    cli.parser("megacompress.launch.slurm_job", __doc__.split("\n\n")[0] + "\n\nSubmit jobs with: megacompress "
               "launch slurm --help", script="launchers/slurm_job.py").parse_args(argv)
    print("this module is run by SLURM jobs; submit one with megacompress launch slurm (or python launchers/slurm.py)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
