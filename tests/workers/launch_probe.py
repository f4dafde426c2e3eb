"""A stand-in for ``megacompress.train`` that checks what a launcher gives each rank.

``main(argv)`` takes the trainer's ``--config/--set`` arguments, joins the process group
from the launcher's environment (gloo), all-reduces the ranks and writes
``RUN_DIR/probe_rank{R}.json`` (RUN_DIR from ``--set logging.run_dir=...``). Used by
tests/test_slurm.py and tests/test_launch_*.py to test the launch machinery on its own.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args, _ = parser.parse_known_args(argv)
    settings = dict(item.split("=", 1) for item in args.overrides)
    run_dir = Path(settings["logging.run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    result = {"rank": rank, "world_size": world, "rank_sum": total.item(),
              "local_rank": int(os.environ["LOCAL_RANK"]), "overrides": args.overrides,
              "ds_accelerator": os.environ.get("DS_ACCELERATOR"), "omp": os.environ.get("OMP_NUM_THREADS")}
    (run_dir / f"probe_rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
