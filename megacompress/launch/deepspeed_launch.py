r"""Run ``megacompress.train`` under the ``deepspeed`` launcher with an MPI-style hostfile.

    # hostfile: one line per node, "HOST slots=N" (N ranks = GPUs on that node)
    megacompress launch deepspeed --hostfile hostfile --config configs/baseline12.yaml
    # CPU node(s): slots are ranks; --num-gpus caps the ranks per node (DeepSpeed's --num_gpus)
    megacompress launch deepspeed --hostfile hostfile --num-gpus 2 --config configs/tiny_gpt.yaml
    # without ssh/pdsh: start one launcher per node, each with its --node-rank
    megacompress launch deepspeed --hostfile hostfile --no-ssh --node-rank 0 \
        --master-addr 10.0.0.1 --master-port 29500 --config configs/tiny_gpt.yaml

The hostfile is read here to know the world size, the config is validated for it, and
then this process runs ``deepspeed ... --module megacompress.train --config ...`` (signals
to the ranks; a signal-triggered checkpoint ends with exit status 75).
With ``--no-ssh`` DeepSpeed starts only this node's ranks (global ranks from the hostfile
order and --node-rank), so the same command works on loopback "nodes" for testing.
``python launchers/deepspeed_launch.py`` is the same command.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from megacompress import cli
from megacompress.launch.common import (
    Launch, LaunchError, add_launch_arguments, add_train_arguments, command_from_args, launch_main,
    run_dir_override, validate)


def read_hostfile(path: str | Path) -> dict[str, int]:
    """``HOST slots=N`` lines (``#`` comments, blank lines ignored) -> ordered {host: slots}."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise LaunchError(f"cannot read hostfile {path}: {err}") from err
    hosts: dict[str, int] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("slots=") or not parts[1][6:].isdigit():
            raise LaunchError(f"{path}:{number}: expected 'HOST slots=N', got {raw!r}")
        if parts[0] in hosts:
            raise LaunchError(f"{path}:{number}: host {parts[0]!r} listed twice")
        hosts[parts[0]] = int(parts[1][6:])
    if not hosts:
        raise LaunchError(f"hostfile {path} lists no hosts")
    return hosts


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("megacompress.launch.deepspeed_launch", __doc__, script="launchers/deepspeed_launch.py")
    add_train_arguments(parser)
    ds = parser.add_argument_group("deepspeed")
    ds.add_argument("--hostfile", required=True, help="MPI-style hostfile: 'HOST slots=N' per line")
    ds.add_argument("--num-gpus", type=int, default=None,
                    help="ranks per node (DeepSpeed --num_gpus; needed on CPU nodes, default: the slots)")
    ds.add_argument("--num-nodes", type=int, default=None, help="use only the first N hosts")
    ds.add_argument("--master-addr", default=None, help="address of the first host (default: DeepSpeed's)")
    ds.add_argument("--master-port", type=int, default=29500, help="rendezvous port on the first host (default: 29500)")
    ds.add_argument("--no-ssh", action="store_true",
                    help="start only this node's ranks (run the command on every node, with --node-rank)")
    ds.add_argument("--node-rank", type=int, default=None, help="this node's index in the hostfile (with --no-ssh)")
    ds.add_argument("--gpus", action="store_true", help="GPU nodes (default: CPU, gloo, DS_ACCELERATOR=cpu)")
    add_launch_arguments(parser)
    return parser


def build_command(args: argparse.Namespace) -> Launch:
    hosts = list(read_hostfile(args.hostfile).items())
    if args.num_nodes is not None:
        if not 1 <= args.num_nodes <= len(hosts):
            raise LaunchError(f"--num-nodes {args.num_nodes}: hostfile {args.hostfile} has {len(hosts)} hosts")
        hosts = hosts[: args.num_nodes]
    if args.no_ssh and (args.node_rank is None or not 0 <= args.node_rank < len(hosts)):
        raise LaunchError(f"--no-ssh needs --node-rank in [0, {len(hosts)}) (hosts in {args.hostfile})")
    if args.node_rank is not None and not args.no_ssh:
        raise LaunchError("--node-rank only makes sense with --no-ssh")
    if args.no_ssh and not args.master_addr:
        raise LaunchError("--no-ssh needs --master-addr (the first host's address)")
    world_size = sum(min(slots, args.num_gpus or slots) for _, slots in hosts)
    command = command_from_args(args)
    if args.run_dir:
        command = command.with_overrides([run_dir_override(Path(args.run_dir).resolve())])
    config = validate(command, world_size, on_gpu=args.gpus)

    launcher = shutil.which("deepspeed") or str(Path(sys.executable).with_name("deepspeed"))
    cmd = [launcher, "--hostfile", str(Path(args.hostfile).resolve()), f"--master_port={args.master_port}"]
    if args.num_gpus is not None:
        cmd.append(f"--num_gpus={args.num_gpus}")
    if args.num_nodes is not None:
        cmd.append(f"--num_nodes={args.num_nodes}")
    if args.master_addr:
        cmd.append(f"--master_addr={args.master_addr}")
    if args.no_ssh:
        cmd += ["--no_ssh", f"--node_rank={args.node_rank}"]
    # The trainer reads LOCAL_RANK from the environment; it takes no --local_rank argument.
    cmd += ["--no_local_rank", "--module", args.module, *command.argv()]
    return Launch(cmd, config.run_dir)


def main(argv: list[str] | None = None) -> int:
    return launch_main(build_parser(), build_command, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
