"""Worker: run one or more trainings in this process and save each rank's loss history.

    torchrun --nproc-per-node 2 tests/workers/train_runs.py --out DIR \
        --common "k=v;k=v" --job NAME="k=v;k=v" [--job ...] [--stop-at-step K]

Each run writes ``DIR/NAME.rank{r}.pt``: {"steps", "losses", "grad_norms", "reason", "checkpoint"}.
"""

import argparse
import gc
import os
from pathlib import Path

import torch

from megacompress.training.config import load_config
from megacompress.training.trainer import Trainer


def split(spec: str) -> list[str]:
    return [s for s in spec.split(";") if s]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--common", default="")
    parser.add_argument("--job", action="append", required=True, help="NAME=k=v;k=v")
    parser.add_argument("--stop-at-step", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    for run in args.job:
        name, _, spec = run.partition("=")
        config = load_config(None, split(args.common) + split(spec))
        result = Trainer(config, stop_at_step=args.stop_at_step).train()
        torch.save({"steps": [r["step"] for r in result.history],
                    "losses": [r["loss"] for r in result.history],
                    "grad_norms": [r["grad_norm"] for r in result.history],
                    "reason": result.reason, "checkpoint": result.checkpoint},
                   out / f"{name}.rank{rank}.pt")
        gc.collect()


if __name__ == "__main__":
    main()
