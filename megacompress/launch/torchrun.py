r"""Run ``megacompress.train`` under torchrun, on one node or on several.

    # one node, 2 ranks
    megacompress launch torchrun --nproc-per-node 2 --config configs/tiny_gpt.yaml
    # two nodes: run on each node, with its own --node-rank
    megacompress launch torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \
        --master-addr node0.example --master-port 29500 --config configs/baseline12.yaml

The config is validated for the full world size (nnodes x nproc-per-node) first; then this
process becomes ``python -m torch.distributed.run ... -m megacompress.train --config ...``
(static rendezvous at MASTER_ADDR:MASTER_PORT, the same for every node), run as a child:
SIGTERM/SIGUSR2 sent to this process go to the ranks, and a signal-triggered checkpoint
ends with exit status 75 (torchrun itself would exit 1). A user error the ranks report
(a corrupt shard, a checkpoint from another model) is their one ``error: ...`` line and exit
status 2, without torchrun's failure report; a crash keeps the report. ``python
launchers/torchrun.py`` is the same command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megacompress import cli
from megacompress.launch.common import (
    Launch, LaunchError, add_launch_arguments, add_train_arguments, command_from_args, launch_main,
    run_dir_override, validate)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("megacompress.launch.torchrun", __doc__, script="launchers/torchrun.py")
    add_train_arguments(parser)
    dist = parser.add_argument_group("torchrun")
    dist.add_argument("--nproc-per-node", type=int, default=1, help="ranks on this node, one per GPU (default: 1)")
    dist.add_argument("--nnodes", type=int, default=1, help="number of nodes (default: 1)")
    dist.add_argument("--node-rank", type=int, default=0, help="this node's index in [0, nnodes) (default: 0)")
    dist.add_argument("--master-addr", default="127.0.0.1", help="address of node 0, reachable from all nodes (default: 127.0.0.1)")
    dist.add_argument("--master-port", type=int, default=29500, help="rendezvous port on node 0 (default: 29500)")
    dist.add_argument("--gpus", action="store_true", help="GPU nodes (default: CPU, gloo, DS_ACCELERATOR=cpu)")
    add_launch_arguments(parser)
    return parser


def build_command(args: argparse.Namespace) -> Launch:
    if not 0 <= args.node_rank < args.nnodes:
        raise LaunchError(f"--node-rank {args.node_rank} is not in [0, --nnodes {args.nnodes})")
    command = command_from_args(args)
    if args.run_dir:
        command = command.with_overrides([run_dir_override(Path(args.run_dir).resolve())])
    config = validate(command, args.nnodes * args.nproc_per_node, on_gpu=args.gpus)
    return Launch([
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={args.nnodes}", f"--node-rank={args.node_rank}",
        f"--nproc-per-node={args.nproc_per_node}",
        f"--master-addr={args.master_addr}", f"--master-port={args.master_port}",
        "-m", args.module, *command.argv(),
    ], config.run_dir)


def main(argv: list[str] | None = None) -> int:
    return launch_main(build_parser(), build_command, argv, torchrun=True)


if __name__ == "__main__":
    sys.exit(cli.run(main))
