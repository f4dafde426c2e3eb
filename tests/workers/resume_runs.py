"""Worker: trainings that may be refused at resume, run one after another in this process.

    [torchrun --nproc-per-node N] tests/workers/resume_runs.py DIR "k=v;k=v" NAME="k=v;k=v" [NAME=...]

(output directory, overrides common to all jobs, one NAME=overrides per job)

Each job writes ``DIR/NAME.rank{r}.pt``: {"steps", "losses", "lrs", "reason"} of a finished
run, or {"error": message} when building the `Trainer` raised a `CheckpointError` or
`TrainConfigError` (a refused resume); later jobs still run.
"""

import gc
import os
import sys
from pathlib import Path

import torch
from train_runs import split

from megacompress.training.checkpoint import CheckpointError
from megacompress.training.config import TrainConfigError, load_config
from megacompress.training.trainer import Trainer


def run(overrides: list[str]) -> dict:
    try:
        trainer = Trainer(load_config(None, overrides))
    except (CheckpointError, TrainConfigError) as exc:
        return {"error": str(exc)}
    result = trainer.train()
    del trainer
    gc.collect()
    return {"steps": [r["step"] for r in result.history], "losses": [r["loss"] for r in result.history],
            "lrs": [r["lr"] for r in result.history], "reason": result.reason}


def main() -> None:
    out, common, *jobs = sys.argv[1:]
    Path(out).mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    for job in jobs:
        name, _, spec = job.partition("=")
        torch.save(run(split(common) + split(spec)), Path(out) / f"{name}.rank{rank}.pt")


if __name__ == "__main__":
    main()
