"""The callable a SLURM job runs: one task per GPU (or per CPU rank), trainer in-process.

submitit pickles a ``TrainJob`` into the job folder and every task of the job unpickles it
and calls it. ``__call__`` exports the torch.distributed environment submitit derives
from SLURM (MASTER_ADDR = first node, MASTER_PORT from the job id, RANK, WORLD_SIZE,
LOCAL_RANK) and calls ``megacompress.train.main`` in this process; the trainer resumes
from the run's ``latest`` checkpoint whenever there is one.

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

import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

from launchers.common import TRAIN_MODULE, TrainCommand, run_entry_point
from megacompress.training.signals import EXIT_REQUEUE


@dataclass
class TrainJob(submitit.helpers.Checkpointable):
    """Picklable job: the training command plus what every task needs around it.

    ``run_dir`` is the trainer's ``logging.run_dir`` (it writes ``exit_status.json`` there,
    which says which signal stopped it). ``gpus`` pins each task to its local GPU. The
    environment a CPU rank needs (DS_ACCELERATOR, OMP_NUM_THREADS) is exported by the
    sbatch script (launchers/slurm.py), before python starts.
    """

    command: TrainCommand
    run_dir: str
    gpus: bool = True
    module: str = TRAIN_MODULE

    def __call__(self) -> dict:
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=self.gpus, overwrite=True)
        # submitit installed its checkpoint-and-requeue handler before calling us; the
        # trainer replaces it with its own while it runs, so keep it for afterwards.
        requeue_handler = signal.getsignal(signal.SIGUSR2)
        status = run_entry_point(self.module, self.command.argv())
        if status == 0:
            return {"rank": dist_env.rank, "world_size": dist_env.world_size, "run_dir": self.run_dir}
        if status != EXIT_REQUEUE:
            raise RuntimeError(f"{self.module} exited with status {status} on rank {dist_env.rank}; "
                               f"see this task's log and {self.run_dir}")
        # Checkpointed after a signal. Only rank 0 requeues; every rank leaves without a
        # result file, so submitit waits for the requeued job's results.
        if dist_env.rank == 0 and self._stopped_by() != "SIGTERM" and callable(requeue_handler):
            requeue_handler(signal.SIGUSR2, None)  # checkpoint() + scontrol requeue + exit
        sys.exit(0)

    def _stopped_by(self) -> str | None:
        """The signal name rank 0's trainer recorded in RUN_DIR/exit_status.json, if any."""
        path = Path(self.run_dir) / "exit_status.json"
        try:
            return json.loads(path.read_text()).get("signal")
        except (OSError, ValueError):
            return None
